{
  "targets": [
    {
      "target_name": "nbdm_copy_range",
      "sources": ["copy_range.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
