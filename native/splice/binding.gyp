{
  "targets": [
    {
      "target_name": "nbdm_splice",
      "sources": ["splice.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
