// nbdm_splice: splice(2) for large READ replies, leg file -> pipe -> socket with no user-space copy
// (src/nbd/server/splice.ts loads it; without it replies are copied as before). All calls are
// synchronous on the calling thread, never throw for a system error and never allocate: an error comes
// back as -errno.
//
//   pipe(capacityBytes)                    -> [readFd, writeFd, capacityBytes] or -errno. Both ends
//                                             O_NONBLOCK | O_CLOEXEC; capacity set with F_SETPIPE_SZ.
//   fill(fileFd, position, pipeFd, length) -> bytes moved from the file at `position` into the pipe (loops
//                                             on short counts; less than length at end of file or when
//                                             the pipe is full), or -errno when a call failed.
//   send(pipeFd, sockFd, length)           -> bytes moved from the pipe to the socket before it would block
//                                             (0: it would block at once), or -errno when nothing moved.
//   read(pipeFd, buf, offset, length)      -> read(2) from the pipe into buf[offset, offset + length):
//                                             bytes or -errno.
//   pending(pipeFd)                        -> bytes the pipe holds (FIONREAD), or -errno.
// A bad argument (a caller bug) throws a TypeError / RangeError. EINTR is retried.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <node_api.h>

#define ARGS_MAX 4

static int args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) return 0;
  return 1;
}

static napi_value num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

static napi_value do_pipe(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t cap;
  if (!args(env, info, 1, argv) || napi_get_value_int32(env, argv[0], &cap) != napi_ok || cap <= 0) {
    napi_throw_type_error(env, NULL, "pipe(capacityBytes): bad arguments");
    return NULL;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return num(env, -errno);
  int got = fcntl(fds[1], F_SETPIPE_SZ, cap);
  if (got < 0) {
    int e = errno;
    close(fds[0]);
    close(fds[1]);
    return num(env, -e);
  }
  napi_value arr;
  napi_create_array_with_length(env, 3, &arr);
  napi_set_element(env, arr, 0, num(env, fds[0]));
  napi_set_element(env, arr, 1, num(env, fds[1]));
  napi_set_element(env, arr, 2, num(env, got));
  return arr;
}

static napi_value do_fill(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t fd, pfd;
  int64_t pos, len;
  if (!args(env, info, 4, argv) || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &pos) != napi_ok || napi_get_value_int32(env, argv[2], &pfd) != napi_ok ||
      napi_get_value_int64(env, argv[3], &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "fill(fileFd, position, pipeFd, length): bad arguments");
    return NULL;
  }
  if (pos < 0 || len < 0 || len > INT32_MAX) {
    napi_throw_range_error(env, NULL, "fill(fileFd, position, pipeFd, length): bad range");
    return NULL;
  }
  __off64_t off = (__off64_t)pos;
  int64_t done = 0;
  while (done < len) {
    ssize_t n = splice(fd, &off, pfd, NULL, (size_t)(len - done), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break; // the pipe is full
      return num(env, -errno);
    }
    if (n == 0) break; // end of file
    done += n;
  }
  return num(env, (double)done);
}

static napi_value do_send(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t pfd, sfd;
  int64_t len;
  if (!args(env, info, 3, argv) || napi_get_value_int32(env, argv[0], &pfd) != napi_ok ||
      napi_get_value_int32(env, argv[1], &sfd) != napi_ok || napi_get_value_int64(env, argv[2], &len) != napi_ok || len < 0 ||
      len > INT32_MAX) {
    napi_throw_type_error(env, NULL, "send(pipeFd, sockFd, length): bad arguments");
    return NULL;
  }
  int64_t done = 0;
  while (done < len) {
    ssize_t n = splice(pfd, NULL, sfd, NULL, (size_t)(len - done), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || done > 0) break; // would block; or report the error on the next call
      return num(env, -errno);
    }
    if (n == 0) break; // the pipe is empty (a caller bug: it holds `len` bytes); the caller sees the short count
    done += n;
  }
  return num(env, (double)done);
}

static napi_value do_read(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t pfd;
  int64_t offset, len;
  void *data;
  size_t size;
  if (!args(env, info, 4, argv) || napi_get_value_int32(env, argv[0], &pfd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok || napi_get_value_int64(env, argv[2], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[3], &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "read(pipeFd, buf, offset, length): bad arguments");
    return NULL;
  }
  if (offset < 0 || len < 0 || (uint64_t)offset + (uint64_t)len > size) {
    napi_throw_range_error(env, NULL, "read(pipeFd, buf, offset, length): bad range");
    return NULL;
  }
  ssize_t n;
  do n = read(pfd, (uint8_t *)data + offset, (size_t)len);
  while (n < 0 && errno == EINTR);
  return num(env, n < 0 ? -errno : (double)n);
}

static napi_value do_pending(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t pfd;
  if (!args(env, info, 1, argv) || napi_get_value_int32(env, argv[0], &pfd) != napi_ok) {
    napi_throw_type_error(env, NULL, "pending(pipeFd): bad arguments");
    return NULL;
  }
  int n = 0;
  return num(env, ioctl(pfd, FIONREAD, &n) < 0 ? -errno : n);
}

static napi_value init(napi_env env, napi_value exports) {
  static const struct { const char *name; napi_callback cb; } fns[] = {
    {"pipe", do_pipe}, {"fill", do_fill}, {"send", do_send}, {"read", do_read}, {"pending", do_pending},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].cb, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
