{
  "targets": [
    {
      "target_name": "nbdm_peercred",
      "sources": ["peercred.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
