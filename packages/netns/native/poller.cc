// Poller: a uv_poll_t on an fd in Node's own event loop, calling back into JS when the fd is
// readable or writable (level-triggered). Sockets built on it neither block nor busy-poll.
#include <uv.h>

#include <memory>

#include "common.h"

namespace weir {

namespace {

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod("start", &Poller::Start), InstanceMethod("stop", &Poller::Stop),
                        InstanceMethod("close", &Poller::Close)});
  }

  // new Poller(fd, callback(status, events)); status < 0 is a libuv error code.
  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    int fd = IntArg(info, 0, "fd");
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
    auto* h = new Handle{};
    int r = uv_poll_init(loop, &h->poll, fd);
    if (r < 0) {
      delete h;
      throw SysError(env, "uv_poll_init", -r);
    }
    h->owner = this;
    h->poll.data = h;
    h_ = h;
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    ctx_ = std::make_unique<Napi::AsyncContext>(env, "WeirNetnsPoller");
    // A worker thread closes its loop on exit and aborts on handles still open: close ours first.
    napi_add_env_cleanup_hook(env, OnEnvCleanup, this);
  }

  ~Poller() override { Release(); }

 private:
  struct Handle {
    uv_poll_t poll;
    Poller* owner;
  };

  // start(events): 1 = readable, 2 = writable (UV_READABLE | UV_WRITABLE).
  Napi::Value Start(const Napi::CallbackInfo& info) {
    int events = IntArg(info, 0, "events") & (UV_READABLE | UV_WRITABLE);
    if (!h_) throw Napi::Error::New(info.Env(), "poller is closed");
    int r = uv_poll_start(&h_->poll, events, OnPoll);
    if (r < 0) throw SysError(info.Env(), "uv_poll_start", -r);
    if (!active_) {
      Ref();  // an active poller keeps its JS object (and callback) alive
      active_ = true;
    }
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (h_) uv_poll_stop(&h_->poll);
    Deactivate();
    return info.Env().Undefined();
  }

  // close(): stops watching; the fd itself stays open and belongs to the caller.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    Deactivate();
    return info.Env().Undefined();
  }

  void Deactivate() {
    if (active_) {
      active_ = false;
      Unref();
    }
  }

  static void FreeHandle(uv_handle_t* handle) { delete static_cast<Handle*>(handle->data); }

  static void OnEnvCleanup(void* arg) { static_cast<Poller*>(arg)->Release(true); }

  // At env teardown the addon may be unloaded before libuv runs close callbacks, so the handle
  // is closed without one and its few bytes are left behind, once per poller per dying env.
  void Release(bool teardown = false) {
    if (!h_) return;
    if (!teardown) napi_remove_env_cleanup_hook(Env(), OnEnvCleanup, this);
    uv_poll_stop(&h_->poll);
    h_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&h_->poll), teardown ? nullptr : FreeHandle);
    h_ = nullptr;
    // The callback usually closes over the JS object that owns this poller: a strong reference
    // kept past close would be a GC root holding both alive for good (one leak per connect).
    if (!teardown) cb_.Reset();
  }

  // Plain N-API calls here: while a worker terminates JS cannot run, and node-addon-api would
  // turn that into a fatal error. Then the event is dropped; the cleanup hook closes us soon.
  static void OnPoll(uv_poll_t* poll, int status, int events) {
    Poller* self = static_cast<Handle*>(poll->data)->owner;
    if (!self) return;
    napi_env env = self->Env();
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    napi_value recv, fn, argv[2], result;
    if (napi_get_reference_value(env, self->cb_, &fn) == napi_ok && fn != nullptr &&
        napi_get_reference_value(env, self->Napi::Reference<Napi::Object>::operator napi_ref(), &recv) == napi_ok &&
        recv != nullptr && napi_create_int32(env, status, &argv[0]) == napi_ok &&
        napi_create_int32(env, events, &argv[1]) == napi_ok) {
      // napi_make_callback runs queued nextTicks and microtasks afterwards, like any libuv callback.
      if (napi_make_callback(env, *self->ctx_, recv, fn, 2, argv, &result) == napi_pending_exception) {
        // No JS frame to throw into: hand the exception to process 'uncaughtException'.
        napi_value err;
        bool pending = false;
        if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
            napi_get_and_clear_last_exception(env, &err) == napi_ok) {
          napi_fatal_exception(env, err);
        }
      }
    }
    napi_close_handle_scope(env, scope);
  }

  Handle* h_ = nullptr;
  bool active_ = false;
  Napi::FunctionReference cb_;
  std::unique_ptr<Napi::AsyncContext> ctx_;
};

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) { exports.Set("Poller", Poller::Define(env)); }

}  // namespace weir
