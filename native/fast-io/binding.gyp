{
  "targets": [
    {
      "target_name": "nbdm_fast_io",
      "sources": ["fast_io.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
