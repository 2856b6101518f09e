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

  void Release() {
    if (!h_) return;
    uv_poll_stop(&h_->poll);
    h_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&h_->poll),
             [](uv_handle_t* handle) { delete static_cast<Handle*>(handle->data); });
    h_ = nullptr;
  }

  static void OnPoll(uv_poll_t* poll, int status, int events) {
    Poller* self = static_cast<Handle*>(poll->data)->owner;
    if (!self) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    try {
      // MakeCallback runs queued microtasks and nextTicks afterwards, like any libuv callback.
      self->cb_.MakeCallback(self->Value(), {Napi::Number::New(env, status), Napi::Number::New(env, events)},
                             *self->ctx_);
    } catch (const Napi::Error& e) {
      // No JS frame to throw into: hand the exception to process 'uncaughtException'.
      napi_fatal_exception(env, e.Value());
    }
  }

  Handle* h_ = nullptr;
  bool active_ = false;
  Napi::FunctionReference cb_;
  std::unique_ptr<Napi::AsyncContext> ctx_;
};

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) { exports.Set("Poller", Poller::Define(env)); }

}  // namespace weir
