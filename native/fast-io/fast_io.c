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
//       (getsockopt), or -errno. For every unix-socket connection (src/nbd/server/send-buffer.ts).
//
//   mapShared(fd, offsetBytes, lengthBytes) -> a mapping (an external) of the file's [offsetBytes,
//       offsetBytes + lengthBytes) (any offset: the mapping starts at the page below it), MAP_SHARED and
//       writable, or -errno. For writes to a file on a memory file system (tmpfs): copying into its pages
//       from user space costs ~130 us per MiB here, against ~250 us for pwrite(2) (which looks up, locks and
//       dirties every 4 KiB page in the kernel). unmap(mapping) releases it (idempotent; also on GC).
//   copyToMap(mapping, position, buf, offset, length, callback) -> undefined; copies buf[offset, offset +
//       length) to the mapping at position (from its offsetBytes) in ONE job on libuv's thread pool
//       (napi_async_work), then callback(result) on the JS thread: length, or -errno: -EFAULT when the copy hit SIGBUS (the file
//       was truncated under the mapping, or tmpfs could not allocate a page: ENOSPC), -ERANGE outside the
//       mapping, -EBADF after unmap. The SIGBUS is caught for that copy only (a per-thread guard, siglongjmp);
//       any other SIGBUS goes to the handler that was there before, or kills the process as it would have.
//       The bytes copied before a fault stay written (the caller fails that leg). buf is referenced until
//       the callback ran; the caller keeps the mapping until then (FileLeg counts the job in flight).
//   copyToMapSync(mapping, position, buf, offset, length) -> length or -errno: the same copy on the calling
//       thread (the file legs' small synchronous writes: ~1.2 us of CPU for a random 4 KiB write into a
//       256 MiB tmpfs file against ~2.6 us for pwrite).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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


// ---- mapped writes (mapShared / copyToMap / unmap) ----------------------------------------------------

typedef struct {
  /** What mmap returned (page-aligned), NULL once unmapped; mapped_length bytes from there. */
  uint8_t *addr;
  size_t mapped_length;
  /** The mapped file range: offsetBytes is addr + delta; length bytes from there. */
  size_t delta;
  size_t length;
} mapping_t;

/** Linux's default fault_around_bytes: a read fault maps the page-cache pages of this aligned window. */
#define FAULT_AROUND_BYTES 65536

/** The jump buffer of the guarded copy running on this thread, or NULL (initial-exec: no allocation on first use in the handler; volatile: the stores around memcpy must stay). */
static __thread sigjmp_buf *volatile guard_jump __attribute__((tls_model("initial-exec")));
static struct sigaction previous_sigbus;
static int sigbus_installed = 0;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
  sigjmp_buf *jump = guard_jump;
  if (jump != NULL) {
    guard_jump = NULL;
    siglongjmp(*jump, 1);
  }
  // Not a guarded copy: what would have happened without us.
  if ((previous_sigbus.sa_flags & SA_SIGINFO) && previous_sigbus.sa_sigaction != NULL) {
    previous_sigbus.sa_sigaction(sig, info, context);
    return;
  }
  if (!(previous_sigbus.sa_flags & SA_SIGINFO) && previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN) {
    previous_sigbus.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL); // the faulting instruction runs again and takes the default action
}

/** SIGBUS is unblocked in this thread (once per thread: see guarded_copy). */
static __thread int sigbus_unblocked __attribute__((tls_model("initial-exec")));

/**
 * memcpy that returns -EFAULT instead of dying when a page of dst raises SIGBUS. A fault signal that is
 * blocked kills the process whatever the handler, so SIGBUS is unblocked in the calling thread, once (a
 * thread that may block it, such as a pool thread, keeps it unblocked: only a kill(2) of SIGBUS could
 * reach it there, and it would go where it went before, through on_sigbus).
 */
static int guarded_copy(uint8_t *dst, const uint8_t *src, size_t length) {
  if (!sigbus_unblocked) {
    sigset_t bus;
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    if (pthread_sigmask(SIG_UNBLOCK, &bus, NULL) != 0) return -EINVAL;
    sigbus_unblocked = 1;
  }
  sigjmp_buf jump;
  int r = 0;
  if (sigsetjmp(jump, 0) == 0) {
    guard_jump = &jump;
    // Map the destination's pages with READ faults first, one per FAULT_AROUND_BYTES: a read fault maps up to
    // 16 page-cache pages at once (the kernel's fault-around; on tmpfs the entries are writable, there is no
    // dirty tracking), where the copy's write faults would take one fault per 4 KiB page (~2.3 us each here,
    // ~600 us per MiB on a first pass against ~110 us this way). Pages already mapped cost a load each.
    for (const volatile uint8_t *p = dst; p < dst + length; p = (const volatile uint8_t *)(((uintptr_t)p & ~(uintptr_t)(FAULT_AROUND_BYTES - 1)) + FAULT_AROUND_BYTES)) (void)*p;
    memcpy(dst, src, length);
    guard_jump = NULL;
  } else {
    r = -EFAULT; // the handler cleared guard_jump
  }
  return r;
}

static void mapping_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  mapping_t *m = data;
  if (m->addr != NULL) munmap(m->addr, m->mapped_length);
  free(m);
}

static napi_value do_map_shared(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], out;
  int32_t fd;
  int64_t offset, length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok || napi_get_value_int64(env, argv[2], &length) != napi_ok || fd < 0 || offset < 0 ||
      length <= 0) {
    napi_throw_type_error(env, NULL, "mapShared(fd, offsetBytes, lengthBytes): bad arguments");
    return NULL;
  }
  if (!sigbus_installed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous_sigbus) != 0) {
      napi_create_int32(env, -errno, &out);
      return out;
    }
    sigbus_installed = 1;
  }
  long page = sysconf(_SC_PAGESIZE);
  size_t delta = (size_t)(offset % (page > 0 ? page : 4096));
  size_t mapped_length = delta + (size_t)length;
  void *addr = mmap(NULL, mapped_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)(offset - (int64_t)delta));
  if (addr == MAP_FAILED) {
    napi_create_int32(env, -errno, &out);
    return out;
  }
  mapping_t *m = malloc(sizeof *m);
  if (m == NULL) {
    munmap(addr, mapped_length);
    napi_create_int32(env, -ENOMEM, &out);
    return out;
  }
  m->addr = addr;
  m->mapped_length = mapped_length;
  m->delta = delta;
  m->length = (size_t)length;
  if (napi_create_external(env, m, mapping_finalize, NULL, &out) != napi_ok) {
    munmap(addr, mapped_length);
    free(m);
    napi_throw_error(env, NULL, "mapShared: cannot create the handle");
    return NULL;
  }
  return out;
}

static mapping_t *mapping_of(napi_env env, napi_value v) {
  napi_valuetype t;
  void *data = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &data) != napi_ok) return NULL;
  return data;
}

static napi_value do_unmap(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  mapping_t *m;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || (m = mapping_of(env, argv[0])) == NULL) {
    napi_throw_type_error(env, NULL, "unmap(mapping): bad arguments");
    return NULL;
  }
  if (m->addr != NULL) {
    munmap(m->addr, m->mapped_length);
    m->addr = NULL;
  }
  return NULL;
}

typedef struct {
  napi_async_work work;
  napi_ref buf_ref;
  napi_ref cb_ref;
  uint8_t *dst;
  const uint8_t *src;
  size_t length;
  int64_t result;
} copy_job;

static void copy_execute(napi_env env, void *data) {
  (void)env;
  copy_job *job = data;
  int r = guarded_copy(job->dst, job->src, job->length);
  job->result = r < 0 ? r : (int64_t)job->length;
}

static void copy_complete(napi_env env, napi_status status, void *data) {
  copy_job *job = data;
  napi_value cb, global, v;
  if (napi_get_reference_value(env, job->cb_ref, &cb) == napi_ok && napi_get_global(env, &global) == napi_ok) {
    napi_create_int64(env, status == napi_ok ? job->result : -ECANCELED, &v);
    napi_call_function(env, global, cb, 1, &v, NULL);
  }
  napi_delete_reference(env, job->buf_ref);
  napi_delete_reference(env, job->cb_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

/** A job whose result was known when it was queued (unmapped, out of range): still completes later, never on the caller's stack. */
static void copy_noop(napi_env env, void *data) {
  (void)env;
  (void)data;
}

/** The arguments copyToMap and copyToMapSync share: (mapping, position, buf, offset, length). */
typedef struct {
  mapping_t *m;
  int64_t position, offset, len;
  const uint8_t *src;
} copy_args;

/**
 * Reads argv[0..4] into `a`: false after throwing (TypeError for a wrong type, RangeError for a range outside
 * buf or a negative position). A mapping that is unmapped or too short is not an error here (copy_target).
 */
static bool copy_args_of(napi_env env, napi_value *argv, const char *what, copy_args *a) {
  void *data;
  size_t size;
  if ((a->m = mapping_of(env, argv[0])) == NULL || napi_get_value_int64(env, argv[1], &a->position) != napi_ok ||
      napi_get_buffer_info(env, argv[2], &data, &size) != napi_ok || napi_get_value_int64(env, argv[3], &a->offset) != napi_ok ||
      napi_get_value_int64(env, argv[4], &a->len) != napi_ok) {
    napi_throw_type_error(env, NULL, what);
    return false;
  }
  if (a->offset < 0 || a->len < 0 || (uint64_t)a->offset + (uint64_t)a->len > size || a->position < 0) {
    napi_throw_range_error(env, NULL, what);
    return false;
  }
  a->src = data == NULL ? (const uint8_t *)"" : (const uint8_t *)data + a->offset;
  return true;
}

/** Where the copy goes, or NULL with *result set: -EBADF after unmap, -ERANGE past the mapping. */
static uint8_t *copy_target(const copy_args *a, int64_t *result) {
  if (a->m->addr == NULL) *result = -EBADF;
  else if ((uint64_t)a->position + (uint64_t)a->len > a->m->length) *result = -ERANGE;
  else return a->m->addr + a->m->delta + a->position;
  return NULL;
}

static napi_value do_copy_to_map(napi_env env, napi_callback_info info) {
  static const char *what = "copyToMap(mapping, position, buf, offset, length, callback): bad arguments";
  size_t argc = 6;
  napi_value argv[6], out;
  napi_valuetype cbtype;
  copy_args a;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 || napi_typeof(env, argv[5], &cbtype) != napi_ok ||
      cbtype != napi_function) {
    napi_throw_type_error(env, NULL, what);
    return NULL;
  }
  if (!copy_args_of(env, argv, what, &a)) return NULL;
  copy_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, NULL, "copyToMap: out of memory");
    return NULL;
  }
  // A result known now (unmapped, outside the mapping) still comes through the callback, later.
  job->dst = copy_target(&a, &job->result);
  int known = job->dst == NULL;
  if (!known) {
    job->src = a.src;
    job->length = (size_t)a.len;
  }
  napi_value name;
  napi_create_string_utf8(env, "nbdm:copyToMap", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, argv[2], 1, &job->buf_ref) != napi_ok || napi_create_reference(env, argv[5], 1, &job->cb_ref) != napi_ok ||
      napi_create_async_work(env, NULL, name, known ? copy_noop : copy_execute, copy_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    if (job->buf_ref != NULL) napi_delete_reference(env, job->buf_ref);
    if (job->cb_ref != NULL) napi_delete_reference(env, job->cb_ref);
    if (job->work != NULL) napi_delete_async_work(env, job->work);
    free(job);
    napi_throw_error(env, NULL, "copyToMap: cannot queue the job");
    return NULL;
  }
  napi_get_undefined(env, &out);
  return out;
}


/** copyToMapSync(mapping, position, buf, offset, length) -> length or -errno: copyToMap on the calling thread. */
static napi_value do_copy_to_map_sync(napi_env env, napi_callback_info info) {
  static const char *what = "copyToMapSync(mapping, position, buf, offset, length): bad arguments";
  size_t argc = 5;
  napi_value argv[5], out;
  copy_args a;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    napi_throw_type_error(env, NULL, what);
    return NULL;
  }
  if (!copy_args_of(env, argv, what, &a)) return NULL;
  int64_t result;
  uint8_t *dst = copy_target(&a, &result);
  if (dst != NULL) {
    int r = guarded_copy(dst, a.src, (size_t)a.len);
    result = r < 0 ? r : a.len;
  }
  napi_create_int64(env, result, &out);
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
  napi_create_function(env, "mapShared", NAPI_AUTO_LENGTH, do_map_shared, NULL, &fn);
  napi_set_named_property(env, exports, "mapShared", fn);
  napi_create_function(env, "unmap", NAPI_AUTO_LENGTH, do_unmap, NULL, &fn);
  napi_set_named_property(env, exports, "unmap", fn);
  napi_create_function(env, "copyToMap", NAPI_AUTO_LENGTH, do_copy_to_map, NULL, &fn);
  napi_set_named_property(env, exports, "copyToMap", fn);
  napi_create_function(env, "copyToMapSync", NAPI_AUTO_LENGTH, do_copy_to_map_sync, NULL, &fn);
  napi_set_named_property(env, exports, "copyToMapSync", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
