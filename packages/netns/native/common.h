// Shared helpers for the @weir/netns addon. Errors are thrown as JS Errors carrying `errno` and
// `syscall`; the TypeScript layer maps errno to a stable NetnsError code and adds context.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace weir {

inline Napi::Error SysError(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + std::strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

inline int IntArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  }
  return info[i].As<Napi::Number>().Int32Value();
}

// Moving the calling thread into another network namespace for a few syscalls and back (netns.cc).
// Usage: EnterNetns, make the socket (syscalls only, no JS), LeaveNetns.
struct NetnsSwitch {
  bool entered = false;  // false: the thread already was in the target, no setns was needed
  int err = 0;           // errno when EnterNetns failed
  const char* syscall = nullptr;
};
// Enters the netns of nsFd unless the thread is already there. expectDev/expectIno, when >= 0, are
// the identity the caller opened the namespace with: a different one (the fd was closed behind its
// back and the number reused) fails with ESTALE before any setns, so a socket made after a
// successful EnterNetns lives in that very namespace.
NetnsSwitch EnterNetns(int nsFd, double expectDev, double expectIno);
// Returns to the thread's home netns after EnterNetns; aborts the process if it cannot.
void LeaveNetns(const NetnsSwitch& sw);
// The optional {dev, ino} argument i (the Netns handle's identity); -1s when absent.
void ExpectedId(const Napi::CallbackInfo& info, size_t i, double* dev, double* ino);

void InitNetns(Napi::Env env, Napi::Object exports);
void InitTcp(Napi::Env env, Napi::Object exports);
void InitSeqpacket(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitNetlink(Napi::Env env, Napi::Object exports);
void InitSpawn(Napi::Env env, Napi::Object exports);

}  // namespace weir
