{
  "targets": [
    {
      "target_name": "nbdm_cpg",
      "sources": ["src/cpg_addon.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"],
      "libraries": ["-lcpg", "-lquorum"]
    }
  ]
}
