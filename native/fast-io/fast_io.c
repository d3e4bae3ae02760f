// nbdm_fast_io: synchronous pread/pwrite (and read/write) on the calling thread, for the hot path of the
// file legs (src/mirror/legs/file.ts) and of the NBD server's reply writes (src/nbd/server/transmission.ts).
// Loaded through src/nbd/server/fast-io.ts, which falls back to fs.readSync/writeSync without it.
//
// Why: fs.writeSync costs ~0.8 us per call on top of the pwrite(2) itself in Node 20 (argument
// validation, a context object, the binding's trace-event check with a strcmp, libuv's uv_fs_t set-up and
// clean-up; perf at 4K randwrite QD32 on a 2-leg mirror: ~9% of the server's CPU). These calls cost what
// an N-API call costs (~0.1 us). They never throw for a system error and never allocate: an error comes
// back as -errno (EAGAIN on a full socket is an ordinary result here, not an exception).
//
//   write(fd, buf, offset, length, position) -> bytes written (>= 0) or -errno
//   read(fd, buf, offset, length, position)  -> bytes read (>= 0, 0 at end of file) or -errno
// buf is a Buffer / Uint8Array; [offset, offset + length) must lie inside it (else a RangeError is thrown:
// a caller bug, not an I/O error). position >= 0: pwrite/pread at that file position; -1: write/read at
// the current position (sockets). One system call per call (retried on EINTR only): the caller continues
// short transfers, as it does with fs.
//
//   spinRead(fd, buf, offset, length, spinNs) -> read(2) as read(..., -1) does, but while the non-blocking
//       socket is empty (EAGAIN) it is read again, for up to spinNs nanoseconds; then -EAGAIN. For the server's
//       idle poll (src/nbd/server/idle-poll.ts): waking a halted vCPU costs ~8 us on a VM, so for a short while
//       after a reply spinning beats sleeping in epoll. Spinning here, not in JS: no N-API call per attempt.
//       Each empty read is followed by sched_yield(), so a runnable task on this CPU (on a busy machine often
//       the very client we wait for) goes first; with none, it returns at once.
//
//   setSendBuffer(fd, bytes) -> setsockopt(SO_SNDBUF, bytes) (the kernel caps it at net.core.wmem_max and
//       doubles it; never lowered: a socket already holding as much is left alone), then the size it keeps
//       (getsockopt), or -errno. For TLS connections (src/nbd/tls/server-tls.ts).
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sched.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>
#include <node_api.h>

#define ARGS 5

/** Decodes (fd, buf, offset, length, position); returns the byte pointer or NULL after throwing. */
static uint8_t *args_of(napi_env env, napi_callback_info info, const char *what, int32_t *fd, size_t *length, int64_t *position) {
  size_t argc = ARGS;
  napi_value argv[ARGS];
  void *data;
  size_t size;
  int64_t offset, len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < ARGS ||
      napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[3], &len) != napi_ok ||
      napi_get_value_int64(env, argv[4], position) != napi_ok) {
    napi_throw_type_error(env, NULL, what);
    return NULL;
  }
  if (offset < 0 || len < 0 || (uint64_t)offset + (uint64_t)len > size || *position < -1) {
    napi_throw_range_error(env, NULL, what);
    return NULL;
  }
  *length = (size_t)len;
  // A zero-length Buffer may have a NULL data pointer; the kernel accepts any pointer for 0 bytes.
  return data == NULL ? (uint8_t *)"" : (uint8_t *)data + offset;
}

static napi_value result(napi_env env, ssize_t n) {
  napi_value out;
  // A single call moves less than 2^31 bytes on Linux (MAX_RW_COUNT), so an int32 holds it or -errno.
  napi_create_int32(env, n < 0 ? -errno : (int32_t)n, &out);
  return out;
}

/** One read or write system call on the decoded arguments (retried on EINTR only). */
static napi_value do_io(napi_env env, napi_callback_info info, int writing) {
  int32_t fd;
  size_t length;
  int64_t position;
  const char *what = writing ? "write(fd, buf, offset, length, position): bad arguments" : "read(fd, buf, offset, length, position): bad arguments";
  uint8_t *p = args_of(env, info, what, &fd, &length, &position);
  if (p == NULL) return NULL;
  ssize_t n;
  do {
    if (writing) n = position >= 0 ? pwrite(fd, p, length, (off_t)position) : write(fd, p, length);
    else n = position >= 0 ? pread(fd, p, length, (off_t)position) : read(fd, p, length);
  } while (n < 0 && errno == EINTR);
  return result(env, n);
}

static napi_value do_write(napi_env env, napi_callback_info info) { return do_io(env, info, 1); }

static napi_value do_read(napi_env env, napi_callback_info info) { return do_io(env, info, 0); }

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static napi_value do_spin_read(napi_env env, napi_callback_info info) {
  int32_t fd;
  size_t length;
  int64_t spin_ns;
  uint8_t *p = args_of(env, info, "spinRead(fd, buf, offset, length, spinNs): bad arguments", &fd, &length, &spin_ns);
  if (p == NULL) return NULL;
  int64_t deadline = 0;
  ssize_t n;
  for (;;) {
    n = read(fd, p, length);
    if (n >= 0 || (errno != EAGAIN && errno != EINTR)) break;
    sched_yield();
    int64_t now = now_ns();
    if (deadline == 0) deadline = now + spin_ns;
    else if (now >= deadline) break;
  }
  if (n < 0 && errno == EINTR) errno = EAGAIN;
  return result(env, n);
}

/** setSendBuffer(fd, bytes): setsockopt SO_SNDBUF, then the size the kernel keeps (getsockopt), or -errno. */
static napi_value do_set_send_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd, bytes;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int32(env, argv[1], &bytes) != napi_ok || bytes < 0) {
    napi_throw_type_error(env, NULL, "setSendBuffer(fd, bytes): bad arguments");
    return NULL;
  }
  int v = bytes;
  socklen_t vl = sizeof v;
  napi_value out;
  int cur = 0;
  socklen_t cl = sizeof cur;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &cur, &cl) != 0) v = -errno;
  else if (cur / 2 >= bytes) v = cur; // already at least that (the kernel reports twice what was asked): never lowered
  else if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v) != 0 || getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, &vl) != 0) v = -errno;
  napi_create_int32(env, v, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "write", NAPI_AUTO_LENGTH, do_write, NULL, &fn);
  napi_set_named_property(env, exports, "write", fn);
  napi_create_function(env, "read", NAPI_AUTO_LENGTH, do_read, NULL, &fn);
  napi_set_named_property(env, exports, "read", fn);
  napi_create_function(env, "spinRead", NAPI_AUTO_LENGTH, do_spin_read, NULL, &fn);
  napi_set_named_property(env, exports, "spinRead", fn);
  napi_create_function(env, "setSendBuffer", NAPI_AUTO_LENGTH, do_set_send_buffer, NULL, &fn);
  napi_set_named_property(env, exports, "setSendBuffer", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
