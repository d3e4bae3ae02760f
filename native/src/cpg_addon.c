/*
 * cpg_addon.c — N-API binding for corosync's libcpg (closed process groups) and libquorum.
 *
 * Owns: one library handle per JS object (Cpg or Quorum), the watch of its fd with a uv_poll_t on
 * Node's own loop, and the hand-off of library events to JavaScript.
 *
 * Rules this file keeps (see /work/shared/notes/cluster-on-one-machine.md):
 *  - No JavaScript runs inside a libcpg/libquorum callback: cpg_dispatch keeps a 1 MiB receive buffer on
 *    the C stack, beyond V8's stack limit. Callbacks only copy the event into a native FIFO; the FIFO is
 *    handed to JS after cpg_dispatch returns, one napi_make_callback per event (so nextTicks and
 *    promises run between events), with the global object as receiver.
 *  - A hang-up of the fd or a dispatch error other than TRY_AGAIN (the local corosync died) is reported
 *    once as a 'lost' event; the library handle is then finalized.
 *  - close() while events are being handed to JS is deferred until the hand-off loop ends; the native
 *    state is freed only when both the uv handle has closed and the JS wrapper has been collected.
 *
 * JS surface (wrapped by src/cluster/cpg.ts, which is the only intended user):
 *   new Cpg(cb)   cb(kind, ...): 'deliver'(group, nodeid, pid, Buffer)
 *                                'confchg'(group, members, left, joined)   arrays of {nodeid,pid,reason}
 *                                'totem'(ringNodeId, ringSeq: bigint, memberNodeIds: number[])
 *                                'lost'(csError: number, name: string)
 *     .join(group) / .leave(group) / .mcast(buf)   -> true, or false on CS_ERR_TRY_AGAIN; throw otherwise
 *     .localNodeId() .membership(group) .maxAtomicMsgSize() .flowControlEnabled() .close() .ref() .unref()
 *   new Quorum(cb) cb(kind, ...): 'quorum'(quorate: boolean, ringSeq: bigint, memberNodeIds: number[])
 *                                 'lost'(csError, name)
 *     .getQuorate() .close() .ref() .unref()
 *   errorName(code)
 */
#include <node_api.h>
#include <uv.h>
#include <corosync/cpg.h>
#include <corosync/quorum.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CALL(env, expr)                                                             \
  do {                                                                              \
    napi_status status_ = (expr);                                                   \
    if (status_ != napi_ok) {                                                       \
      const napi_extended_error_info *info_ = NULL;                                 \
      napi_get_last_error_info((env), &info_);                                      \
      bool pending_ = false;                                                        \
      napi_is_exception_pending((env), &pending_);                                  \
      if (!pending_)                                                                \
        napi_throw_error((env), NULL,                                               \
                         info_ && info_->error_message ? info_->error_message       \
                                                      : "N-API call failed");       \
      return NULL;                                                                  \
    }                                                                               \
  } while (0)

/* ---- cs_error_t names ------------------------------------------------------------------------ */

static const char *cs_error_name(int e) {
  switch (e) {
    case CS_OK: return "CS_OK";
    case CS_ERR_LIBRARY: return "CS_ERR_LIBRARY";
    case CS_ERR_VERSION: return "CS_ERR_VERSION";
    case CS_ERR_INIT: return "CS_ERR_INIT";
    case CS_ERR_TIMEOUT: return "CS_ERR_TIMEOUT";
    case CS_ERR_TRY_AGAIN: return "CS_ERR_TRY_AGAIN";
    case CS_ERR_INVALID_PARAM: return "CS_ERR_INVALID_PARAM";
    case CS_ERR_NO_MEMORY: return "CS_ERR_NO_MEMORY";
    case CS_ERR_BAD_HANDLE: return "CS_ERR_BAD_HANDLE";
    case CS_ERR_BUSY: return "CS_ERR_BUSY";
    case CS_ERR_ACCESS: return "CS_ERR_ACCESS";
    case CS_ERR_NOT_EXIST: return "CS_ERR_NOT_EXIST";
    case CS_ERR_NAME_TOO_LONG: return "CS_ERR_NAME_TOO_LONG";
    case CS_ERR_EXIST: return "CS_ERR_EXIST";
    case CS_ERR_NO_SPACE: return "CS_ERR_NO_SPACE";
    case CS_ERR_INTERRUPT: return "CS_ERR_INTERRUPT";
    case CS_ERR_NAME_NOT_FOUND: return "CS_ERR_NAME_NOT_FOUND";
    case CS_ERR_NO_RESOURCES: return "CS_ERR_NO_RESOURCES";
    case CS_ERR_NOT_SUPPORTED: return "CS_ERR_NOT_SUPPORTED";
    case CS_ERR_BAD_OPERATION: return "CS_ERR_BAD_OPERATION";
    case CS_ERR_FAILED_OPERATION: return "CS_ERR_FAILED_OPERATION";
    case CS_ERR_MESSAGE_ERROR: return "CS_ERR_MESSAGE_ERROR";
    case CS_ERR_QUEUE_FULL: return "CS_ERR_QUEUE_FULL";
    case CS_ERR_QUEUE_NOT_AVAILABLE: return "CS_ERR_QUEUE_NOT_AVAILABLE";
    case CS_ERR_BAD_FLAGS: return "CS_ERR_BAD_FLAGS";
    case CS_ERR_TOO_BIG: return "CS_ERR_TOO_BIG";
    case CS_ERR_NO_SECTIONS: return "CS_ERR_NO_SECTIONS";
    case CS_ERR_CONTEXT_NOT_FOUND: return "CS_ERR_CONTEXT_NOT_FOUND";
    case CS_ERR_TOO_MANY_GROUPS: return "CS_ERR_TOO_MANY_GROUPS";
    case CS_ERR_SECURITY: return "CS_ERR_SECURITY";
    default: return "CS_ERR_UNKNOWN";
  }
}

/* Throws Error("<what>: <name> (<code>)") with .code = name and .csError = code. */
static void throw_cs(napi_env env, const char *what, int code) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s (%d)", what, cs_error_name(code), code);
  napi_value message, err, code_v, num_v;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok) return;
  if (napi_create_string_utf8(env, cs_error_name(code), NAPI_AUTO_LENGTH, &code_v) != napi_ok) return;
  if (napi_create_error(env, code_v, message, &err) != napi_ok) return;
  if (napi_create_int32(env, code, &num_v) == napi_ok) napi_set_named_property(env, err, "csError", num_v);
  napi_throw(env, err);
}

/* ---- native event FIFO ----------------------------------------------------------------------- */

typedef enum { EV_DELIVER, EV_CONFCHG, EV_TOTEM, EV_QUORUM } ev_kind;

typedef struct event {
  struct event *next;
  ev_kind kind;
  char group[CPG_MAX_NAME_LENGTH + 1];
  uint32_t nodeid, pid;            /* deliver: sender; totem: ring id's node id */
  uint64_t seq;                    /* totem / quorum ring sequence */
  uint32_t quorate;
  size_t len;                      /* deliver payload length */
  uint32_t n_members, n_left, n_joined;
  void *data;                      /* deliver: payload; confchg: cpg_address[m+l+j]; totem/quorum: uint32_t[] */
} event;

typedef enum { KIND_CPG, KIND_QUORUM } handle_kind;
typedef enum { POLL_NONE, POLL_ACTIVE, POLL_CLOSING, POLL_CLOSED } poll_state;

typedef struct watcher {
  handle_kind kind;
  napi_env env;
  napi_ref self_ref;        /* strong while the library handle is open */
  napi_ref callback_ref;
  napi_async_context async_ctx;
  uv_poll_t poll;
  poll_state poll_state;
  uint64_t handle;          /* cpg_handle_t or quorum_handle_t */
  int lib_open;
  int dispatching;
  int close_requested;
  int wrapper_gone;
  int cleanup_hook_added;
  event *head, *tail;
} watcher;

static void ev_push(watcher *w, event *e) {
  e->next = NULL;
  if (w->tail) w->tail->next = e; else w->head = e;
  w->tail = e;
}

static void ev_free(event *e) {
  free(e->data);
  free(e);
}

static void ev_clear(watcher *w) {
  event *e = w->head;
  while (e) { event *n = e->next; ev_free(e); e = n; }
  w->head = w->tail = NULL;
}

/* ---- library callbacks: copy only, never touch JS -------------------------------------------- */

static watcher *cpg_ctx(cpg_handle_t h) {
  void *ctx = NULL;
  if (cpg_context_get(h, &ctx) != CS_OK) return NULL;
  return (watcher *)ctx;
}

static void copy_group(event *e, const struct cpg_name *g) {
  size_t n = g->length < CPG_MAX_NAME_LENGTH ? g->length : CPG_MAX_NAME_LENGTH;
  memcpy(e->group, g->value, n);
  e->group[n] = 0;
}

/* A zeroed event of this kind (callbacks cannot report failure: out of memory aborts). */
static event *new_event(ev_kind kind) {
  event *e = calloc(1, sizeof *e);
  if (!e) abort();
  e->kind = kind;
  return e;
}

static void on_cpg_deliver(cpg_handle_t h, const struct cpg_name *group, uint32_t nodeid, uint32_t pid,
                           void *msg, size_t len) {
  watcher *w = cpg_ctx(h);
  if (!w) return;
  event *e = new_event(EV_DELIVER);
  copy_group(e, group);
  e->nodeid = nodeid;
  e->pid = pid;
  e->len = len;
  e->data = malloc(len ? len : 1);
  if (!e->data) abort();
  memcpy(e->data, msg, len);
  ev_push(w, e);
}

static void on_cpg_confchg(cpg_handle_t h, const struct cpg_name *group,
                           const struct cpg_address *members, size_t n_members,
                           const struct cpg_address *left, size_t n_left,
                           const struct cpg_address *joined, size_t n_joined) {
  watcher *w = cpg_ctx(h);
  if (!w) return;
  event *e = new_event(EV_CONFCHG);
  copy_group(e, group);
  e->n_members = (uint32_t)n_members;
  e->n_left = (uint32_t)n_left;
  e->n_joined = (uint32_t)n_joined;
  size_t total = n_members + n_left + n_joined;
  struct cpg_address *a = malloc((total ? total : 1) * sizeof *a);
  if (!a) abort();
  if (n_members) memcpy(a, members, n_members * sizeof *a);
  if (n_left) memcpy(a + n_members, left, n_left * sizeof *a);
  if (n_joined) memcpy(a + n_members + n_left, joined, n_joined * sizeof *a);
  e->data = a;
  ev_push(w, e);
}

static void on_cpg_totem(cpg_handle_t h, struct cpg_ring_id ring, uint32_t n, const uint32_t *members) {
  watcher *w = cpg_ctx(h);
  if (!w) return;
  event *e = new_event(EV_TOTEM);
  e->nodeid = ring.nodeid;
  e->seq = ring.seq;
  e->n_members = n;
  e->data = malloc((n ? n : 1) * sizeof(uint32_t));
  if (!e->data) abort();
  if (n) memcpy(e->data, members, n * sizeof(uint32_t));
  ev_push(w, e);
}

static void on_quorum(quorum_handle_t h, uint32_t quorate, uint64_t ring_seq, uint32_t n, uint32_t *members) {
  const void *ctx = NULL;
  if (quorum_context_get(h, &ctx) != CS_OK || !ctx) return;
  watcher *w = (watcher *)ctx;
  event *e = new_event(EV_QUORUM);
  e->quorate = quorate;
  e->seq = ring_seq;
  e->n_members = n;
  e->data = malloc((n ? n : 1) * sizeof(uint32_t));
  if (!e->data) abort();
  if (n) memcpy(e->data, members, n * sizeof(uint32_t));
  ev_push(w, e);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void maybe_free(watcher *w) {
  if (w->wrapper_gone && (w->poll_state == POLL_NONE || w->poll_state == POLL_CLOSED)) {
    ev_clear(w);
    free(w);
  }
}

static void on_uv_closed(uv_handle_t *h) {
  watcher *w = (watcher *)h->data;
  w->poll_state = POLL_CLOSED;
  maybe_free(w);
}

static void env_cleanup(void *arg);

/* Finalize the library handle and stop watching; JS-free (safe from finalizers and cleanup hooks). */
static void do_close(watcher *w) {
  if (w->poll_state == POLL_ACTIVE) {
    uv_poll_stop(&w->poll);
    w->poll_state = POLL_CLOSING;
    uv_close((uv_handle_t *)&w->poll, on_uv_closed);
  }
  if (w->lib_open) {
    w->lib_open = 0;
    if (w->kind == KIND_CPG) cpg_finalize(w->handle); else quorum_finalize(w->handle);
  }
  ev_clear(w);
  if (w->cleanup_hook_added) {
    w->cleanup_hook_added = 0;
    napi_remove_env_cleanup_hook(w->env, env_cleanup, w);
  }
}

static void env_cleanup(void *arg) {
  watcher *w = (watcher *)arg;
  w->cleanup_hook_added = 0;
  do_close(w);
}

static void release_self(watcher *w) {
  if (w->self_ref) {
    uint32_t count = 0;
    napi_reference_unref(w->env, w->self_ref, &count);
  }
}

/* ---- hand-off to JS -------------------------------------------------------------------------- */

static napi_value addr_array(napi_env env, const struct cpg_address *a, uint32_t n) {
  napi_value arr, obj, v;
  if (napi_create_array_with_length(env, n, &arr) != napi_ok) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    if (napi_create_object(env, &obj) != napi_ok) return NULL;
    napi_create_uint32(env, a[i].nodeid, &v); napi_set_named_property(env, obj, "nodeid", v);
    napi_create_uint32(env, a[i].pid, &v); napi_set_named_property(env, obj, "pid", v);
    napi_create_uint32(env, a[i].reason, &v); napi_set_named_property(env, obj, "reason", v);
    napi_set_element(env, arr, i, obj);
  }
  return arr;
}

static napi_value u32_array(napi_env env, const uint32_t *a, uint32_t n) {
  napi_value arr, v;
  if (napi_create_array_with_length(env, n, &arr) != napi_ok) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    napi_create_uint32(env, a[i], &v);
    napi_set_element(env, arr, i, v);
  }
  return arr;
}

static napi_value str(napi_env env, const char *s) {
  napi_value v = NULL;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

/* Calls the JS callback with argv; an exception thrown by it becomes an uncaught exception. */
static void call_js(watcher *w, size_t argc, napi_value *argv) {
  napi_env env = w->env;
  napi_value cb, global, result;
  if (napi_get_reference_value(env, w->callback_ref, &cb) != napi_ok || !cb) return;
  napi_get_global(env, &global);
  napi_status s = napi_make_callback(env, w->async_ctx, global, cb, argc, argv, &result);
  if (s != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
    }
  }
}

static void deliver_event(watcher *w, event *e) {
  napi_env env = w->env;
  napi_value argv[5];
  size_t argc = 0;
  switch (e->kind) {
    case EV_DELIVER: {
      argv[0] = str(env, "deliver");
      argv[1] = str(env, e->group);
      napi_create_uint32(env, e->nodeid, &argv[2]);
      napi_create_uint32(env, e->pid, &argv[3]);
      void *copy = NULL;
      if (napi_create_buffer_copy(env, e->len, e->data, &copy, &argv[4]) != napi_ok) return;
      argc = 5;
      break;
    }
    case EV_CONFCHG: {
      const struct cpg_address *a = e->data;
      argv[0] = str(env, "confchg");
      argv[1] = str(env, e->group);
      argv[2] = addr_array(env, a, e->n_members);
      argv[3] = addr_array(env, a + e->n_members, e->n_left);
      argv[4] = addr_array(env, a + e->n_members + e->n_left, e->n_joined);
      argc = 5;
      break;
    }
    case EV_TOTEM:
      argv[0] = str(env, "totem");
      napi_create_uint32(env, e->nodeid, &argv[1]);
      napi_create_bigint_uint64(env, e->seq, &argv[2]);
      argv[3] = u32_array(env, e->data, e->n_members);
      argc = 4;
      break;
    case EV_QUORUM:
      argv[0] = str(env, "quorum");
      napi_get_boolean(env, e->quorate != 0, &argv[1]);
      napi_create_bigint_uint64(env, e->seq, &argv[2]);
      argv[3] = u32_array(env, e->data, e->n_members);
      argc = 4;
      break;
  }
  for (size_t i = 0; i < argc; i++) if (!argv[i]) return;
  call_js(w, argc, argv);
}

static void emit_lost(watcher *w, int code) {
  napi_value argv[3];
  argv[0] = str(w->env, "lost");
  napi_create_int32(w->env, code, &argv[1]);
  argv[2] = str(w->env, cs_error_name(code));
  call_js(w, 3, argv);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  watcher *w = (watcher *)p->data;
  if (!w->lib_open || w->dispatching) return;
  w->dispatching = 1;
  int err;
  if (status < 0) {
    err = CS_ERR_LIBRARY;
  } else if (w->kind == KIND_CPG) {
    err = cpg_dispatch(w->handle, CS_DISPATCH_ALL);
  } else {
    err = quorum_dispatch(w->handle, CS_DISPATCH_ALL);
  }
  napi_handle_scope scope;
  if (napi_open_handle_scope(w->env, &scope) == napi_ok) {
    while (w->head && !w->close_requested) {
      event *e = w->head;
      w->head = e->next;
      if (!w->head) w->tail = NULL;
      napi_handle_scope inner;
      napi_open_handle_scope(w->env, &inner);
      deliver_event(w, e);
      napi_close_handle_scope(w->env, inner);
      ev_free(e);
    }
    if (err != CS_OK && err != CS_ERR_TRY_AGAIN && !w->close_requested) {
      w->close_requested = 1;
      emit_lost(w, err);
    }
    napi_close_handle_scope(w->env, scope);
  }
  w->dispatching = 0;
  if (w->close_requested) {
    do_close(w);
    release_self(w);
  }
}

/* ---- JS methods ------------------------------------------------------------------------------ */

static watcher *unwrap(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *p = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok) return NULL;
  if (napi_unwrap(env, self, &p) != napi_ok || !p) {
    napi_throw_error(env, NULL, "not a Cpg/Quorum object");
    return NULL;
  }
  return (watcher *)p;
}

static watcher *unwrap_open(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv,
                            handle_kind kind) {
  watcher *w = unwrap(env, info, argc, argv);
  if (!w) return NULL;
  if (w->kind != kind) { napi_throw_type_error(env, NULL, "wrong object kind"); return NULL; }
  if (!w->lib_open || w->close_requested) {
    throw_cs(env, "handle closed", CS_ERR_BAD_HANDLE);
    return NULL;
  }
  return w;
}

static void finalize_wrapper(napi_env env, void *data, void *hint) {
  watcher *w = (watcher *)data;
  w->wrapper_gone = 1;
  do_close(w);
  if (w->callback_ref) { napi_delete_reference(env, w->callback_ref); w->callback_ref = NULL; }
  if (w->self_ref) { napi_delete_reference(env, w->self_ref); w->self_ref = NULL; }
  if (w->async_ctx) { napi_async_destroy(env, w->async_ctx); w->async_ctx = NULL; }
  maybe_free(w);
}

static int get_group(napi_env env, napi_value v, struct cpg_name *name) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "group name must be a string");
    return 0;
  }
  if (len == 0 || len > CPG_MAX_NAME_LENGTH - 1) {
    napi_throw_range_error(env, NULL, "group name must be 1..127 bytes");
    return 0;
  }
  char buf[CPG_MAX_NAME_LENGTH];
  napi_get_value_string_utf8(env, v, buf, sizeof buf, &len);
  memset(name, 0, sizeof *name);
  memcpy(name->value, buf, len);
  name->length = (uint32_t)len;
  return 1;
}

/* Common constructor: new Cpg(cb) / new Quorum(cb). */
static napi_value construct(napi_env env, napi_callback_info info, handle_kind kind) {
  size_t argc = 1;
  napi_value argv[1], self, target;
  CALL(env, napi_get_new_target(env, info, &target));
  if (!target) { napi_throw_type_error(env, NULL, "use new"); return NULL; }
  CALL(env, napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  napi_valuetype t;
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, NULL, "callback function required");
    return NULL;
  }
  watcher *w = calloc(1, sizeof *w);
  if (!w) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  w->kind = kind;
  w->env = env;

  int err, fd = -1;
  if (kind == KIND_CPG) {
    cpg_model_v1_data_t model = {0};
    model.model = CPG_MODEL_V1;
    model.cpg_deliver_fn = on_cpg_deliver;
    model.cpg_confchg_fn = on_cpg_confchg;
    model.cpg_totem_confchg_fn = on_cpg_totem;
    model.flags = CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF;
    cpg_handle_t h;
    err = cpg_model_initialize(&h, CPG_MODEL_V1, (cpg_model_data_t *)&model, w);
    if (err != CS_OK) { free(w); throw_cs(env, "cpg_initialize", err); return NULL; }
    w->handle = h;
    w->lib_open = 1;
    err = cpg_fd_get(h, &fd);
  } else {
    quorum_callbacks_t cbs = { .quorum_notify_fn = on_quorum };
    quorum_handle_t h;
    uint32_t qtype = 0;
    err = quorum_initialize(&h, &cbs, &qtype);
    if (err != CS_OK) { free(w); throw_cs(env, "quorum_initialize", err); return NULL; }
    w->handle = h;
    w->lib_open = 1;
    err = quorum_context_set(h, w);
    if (err == CS_OK) err = quorum_trackstart(h, CS_TRACK_CHANGES);
    if (err == CS_OK) err = quorum_fd_get(h, &fd);
  }
  if (err != CS_OK) {
    do_close(w);
    free(w);
    throw_cs(env, kind == KIND_CPG ? "cpg_fd_get" : "quorum setup", err);
    return NULL;
  }
  uv_loop_t *loop = NULL;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &w->poll, fd) != 0) {
    do_close(w);
    free(w);
    napi_throw_error(env, NULL, "cannot watch the corosync fd");
    return NULL;
  }
  w->poll.data = w;
  w->poll_state = POLL_ACTIVE;
  uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, on_poll);

  napi_value resource_name;
  napi_create_string_utf8(env, kind == KIND_CPG ? "nbdm_cpg" : "nbdm_quorum", NAPI_AUTO_LENGTH, &resource_name);
  napi_async_init(env, NULL, resource_name, &w->async_ctx);
  napi_create_reference(env, argv[0], 1, &w->callback_ref);
  if (napi_wrap(env, self, w, finalize_wrapper, NULL, NULL) != napi_ok) {
    do_close(w);
    w->wrapper_gone = 1; /* freed when the uv handle closes */
    napi_throw_error(env, NULL, "napi_wrap failed");
    return NULL;
  }
  napi_create_reference(env, self, 1, &w->self_ref); /* strong while open */
  napi_add_env_cleanup_hook(env, env_cleanup, w);
  w->cleanup_hook_added = 1;
  return self;
}

static napi_value cpg_new(napi_env env, napi_callback_info info) { return construct(env, info, KIND_CPG); }
static napi_value quorum_new(napi_env env, napi_callback_info info) { return construct(env, info, KIND_QUORUM); }

static napi_value bool_value(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

/* A corosync call's result as a JS value: throws (returns NULL) when err is not CS_OK. */
static napi_value cs_uint32(napi_env env, int err, const char *what, uint32_t value) {
  if (err != CS_OK) { throw_cs(env, what, err); return NULL; }
  napi_value v;
  napi_create_uint32(env, value, &v);
  return v;
}
static napi_value cs_bool(napi_env env, int err, const char *what, bool value) {
  if (err != CS_OK) { throw_cs(env, what, err); return NULL; }
  return bool_value(env, value);
}

static napi_value cpg_join_leave(napi_env env, napi_callback_info info, int join) {
  size_t argc = 1;
  napi_value argv[1];
  watcher *w = unwrap_open(env, info, &argc, argv, KIND_CPG);
  if (!w) return NULL;
  struct cpg_name name;
  if (argc < 1 || !get_group(env, argv[0], &name)) return NULL;
  int err = join ? cpg_join(w->handle, &name) : cpg_leave(w->handle, &name);
  if (err == CS_ERR_TRY_AGAIN) return bool_value(env, false);
  if (err != CS_OK) { throw_cs(env, join ? "cpg_join" : "cpg_leave", err); return NULL; }
  return bool_value(env, true);
}

static napi_value m_join(napi_env env, napi_callback_info info) { return cpg_join_leave(env, info, 1); }
static napi_value m_leave(napi_env env, napi_callback_info info) { return cpg_join_leave(env, info, 0); }

static napi_value m_mcast(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  watcher *w = unwrap_open(env, info, &argc, argv, KIND_CPG);
  if (!w) return NULL;
  void *data = NULL;
  size_t len = 0;
  bool is_buf = false, is_ta = false;
  if (argc >= 1) napi_is_buffer(env, argv[0], &is_buf);
  if (is_buf) {
    CALL(env, napi_get_buffer_info(env, argv[0], &data, &len));
  } else {
    if (argc >= 1) napi_is_typedarray(env, argv[0], &is_ta);
    if (!is_ta) { napi_throw_type_error(env, NULL, "mcast needs a Buffer or Uint8Array"); return NULL; }
    napi_typedarray_type tt;
    size_t n, off;
    napi_value ab;
    CALL(env, napi_get_typedarray_info(env, argv[0], &tt, &n, &data, &ab, &off));
    if (tt != napi_uint8_array) { napi_throw_type_error(env, NULL, "mcast needs a Uint8Array"); return NULL; }
    len = n;
  }
  struct iovec iov = { .iov_base = data, .iov_len = len };
  int err = cpg_mcast_joined(w->handle, CPG_TYPE_AGREED, &iov, 1);
  if (err == CS_ERR_TRY_AGAIN) return bool_value(env, false);
  if (err != CS_OK) { throw_cs(env, "cpg_mcast_joined", err); return NULL; }
  return bool_value(env, true);
}

static napi_value m_local_node_id(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher *w = unwrap_open(env, info, &argc, NULL, KIND_CPG);
  if (!w) return NULL;
  unsigned int id = 0;
  int err = cpg_local_get(w->handle, &id);
  return cs_uint32(env, err, "cpg_local_get", id);
}

static napi_value m_membership(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  watcher *w = unwrap_open(env, info, &argc, argv, KIND_CPG);
  if (!w) return NULL;
  struct cpg_name name;
  if (argc < 1 || !get_group(env, argv[0], &name)) return NULL;
  struct cpg_address members[CPG_MEMBERS_MAX];
  int n = CPG_MEMBERS_MAX;
  int err = cpg_membership_get(w->handle, &name, members, &n);
  if (err != CS_OK) { throw_cs(env, "cpg_membership_get", err); return NULL; }
  return addr_array(env, members, (uint32_t)n);
}

static napi_value m_max_atomic(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher *w = unwrap_open(env, info, &argc, NULL, KIND_CPG);
  if (!w) return NULL;
  uint32_t size = 0;
  int err = cpg_max_atomic_msgsize_get(w->handle, &size);
  return cs_uint32(env, err, "cpg_max_atomic_msgsize_get", size);
}

static napi_value m_flow_control(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher *w = unwrap_open(env, info, &argc, NULL, KIND_CPG);
  if (!w) return NULL;
  cpg_flow_control_state_t st = CPG_FLOW_CONTROL_DISABLED;
  int err = cpg_flow_control_state_get(w->handle, &st);
  return cs_bool(env, err, "cpg_flow_control_state_get", st == CPG_FLOW_CONTROL_ENABLED);
}

static napi_value m_get_quorate(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher *w = unwrap_open(env, info, &argc, NULL, KIND_QUORUM);
  if (!w) return NULL;
  int q = 0;
  int err = quorum_getquorate(w->handle, &q);
  return cs_bool(env, err, "quorum_getquorate", q != 0);
}

static napi_value m_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher *w = unwrap(env, info, &argc, NULL);
  if (!w) return NULL;
  if (w->dispatching) {
    w->close_requested = 1; /* on_poll closes after the hand-off loop */
  } else if (w->lib_open || w->poll_state == POLL_ACTIVE) {
    do_close(w);
    release_self(w);
  }
  return NULL;
}

static napi_value m_ref_unref(napi_env env, napi_callback_info info, int ref) {
  size_t argc = 0;
  watcher *w = unwrap(env, info, &argc, NULL);
  if (!w) return NULL;
  if (w->poll_state == POLL_ACTIVE) {
    if (ref) uv_ref((uv_handle_t *)&w->poll); else uv_unref((uv_handle_t *)&w->poll);
  }
  return NULL;
}
static napi_value m_ref(napi_env env, napi_callback_info info) { return m_ref_unref(env, info, 1); }
static napi_value m_unref(napi_env env, napi_callback_info info) { return m_ref_unref(env, info, 0); }

static napi_value f_error_name(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t code = 0;
  if (argc >= 1) napi_get_value_int32(env, argv[0], &code);
  return str(env, cs_error_name(code));
}

#define METHOD(name, fn) { name, NULL, fn, NULL, NULL, NULL, napi_default, NULL }

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor cpg_props[] = {
    METHOD("join", m_join), METHOD("leave", m_leave), METHOD("mcast", m_mcast),
    METHOD("localNodeId", m_local_node_id), METHOD("membership", m_membership),
    METHOD("maxAtomicMsgSize", m_max_atomic), METHOD("flowControlEnabled", m_flow_control),
    METHOD("close", m_close), METHOD("ref", m_ref), METHOD("unref", m_unref),
  };
  napi_property_descriptor quorum_props[] = {
    METHOD("getQuorate", m_get_quorate), METHOD("close", m_close),
    METHOD("ref", m_ref), METHOD("unref", m_unref),
  };
  napi_value cpg_cls, quorum_cls, fn;
  CALL(env, napi_define_class(env, "Cpg", NAPI_AUTO_LENGTH, cpg_new, NULL,
                              sizeof cpg_props / sizeof cpg_props[0], cpg_props, &cpg_cls));
  CALL(env, napi_define_class(env, "Quorum", NAPI_AUTO_LENGTH, quorum_new, NULL,
                              sizeof quorum_props / sizeof quorum_props[0], quorum_props, &quorum_cls));
  CALL(env, napi_set_named_property(env, exports, "Cpg", cpg_cls));
  CALL(env, napi_set_named_property(env, exports, "Quorum", quorum_cls));
  CALL(env, napi_create_function(env, "errorName", NAPI_AUTO_LENGTH, f_error_name, NULL, &fn));
  CALL(env, napi_set_named_property(env, exports, "errorName", fn));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
