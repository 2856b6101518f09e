// Opening and identifying network namespaces.
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "common.h"

namespace weir {

namespace {

// The calling thread's home network namespace, opened once per thread (each worker has its own)
// and kept open (O_CLOEXEC) to setns back to; closed when the thread exits. It is opened when the
// addon loads on the thread, so callers counting their fds see it as part of the module.
//
// Assumption: between our calls, nothing else moves this thread to another netns. It is checked,
// not trusted: each switch stats /proc/thread-self/ns/net (one syscall, instead of open, fstat and
// close), and a thread found elsewhere makes that netns its new home, exactly as opening
// thread-self on every call did. The cached fd is fstat-ed before use too: if someone closed it
// behind our back and the number now names another file, it is reopened, never trusted.
struct Home {
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  ~Home() {
    if (fd >= 0) close(fd);
  }
};
thread_local Home home;

bool Same(const struct stat& a, dev_t dev, ino_t ino) { return a.st_dev == dev && a.st_ino == ino; }

// (Re)opens home from /proc/thread-self/ns/net; returns the failing syscall, or nullptr.
const char* OpenHome(int* err) {
  struct stat held;
  home.fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home.fd < 0) {
    *err = errno;
    return "open(/proc/thread-self/ns/net)";
  }
  if (fstat(home.fd, &held) < 0) {
    *err = errno;
    close(home.fd);
    home.fd = -1;
    return "fstat(/proc/thread-self/ns/net)";
  }
  home.dev = held.st_dev;
  home.ino = held.st_ino;
  return nullptr;
}

NetnsSwitch Fail(const char* syscall, int err) {
  NetnsSwitch sw;
  sw.err = err;
  sw.syscall = syscall;
  return sw;
}

}  // namespace

NetnsSwitch EnterNetns(int nsFd, double expectDev, double expectIno) {
  struct stat cur, target, held;
  if (fstat(nsFd, &target) < 0) return Fail("fstat(netns fd)", errno);
  if (expectDev >= 0 && !Same(target, static_cast<dev_t>(expectDev), static_cast<ino_t>(expectIno)))
    return Fail("fstat(netns fd)", ESTALE);
  if (stat("/proc/thread-self/ns/net", &cur) < 0) return Fail("stat(/proc/thread-self/ns/net)", errno);
  // Already there: no setns, so no CAP_SYS_ADMIN needed for that case.
  if (Same(cur, target.st_dev, target.st_ino)) return NetnsSwitch{};
  bool valid = home.fd >= 0 && Same(cur, home.dev, home.ino) && fstat(home.fd, &held) == 0 &&
               Same(held, home.dev, home.ino);
  if (!valid) {
    // Only close an fd that is still ours (same identity); a reused number belongs to someone else.
    if (home.fd >= 0 && fstat(home.fd, &held) == 0 && Same(held, home.dev, home.ino)) close(home.fd);
    int err = 0;
    if (const char* call = OpenHome(&err)) return Fail(call, err);
  }
  if (setns(nsFd, CLONE_NEWNET) < 0) return Fail("setns", errno);
  NetnsSwitch sw;
  sw.entered = true;
  return sw;
}

void LeaveNetns(const NetnsSwitch& sw) {
  if (sw.entered && setns(home.fd, CLONE_NEWNET) < 0) {
    // The thread would keep running JavaScript in the wrong namespace: never acceptable.
    std::fprintf(stderr, "@weir/netns: FATAL: setns back to the original network namespace failed: %s\n",
                 std::strerror(errno));
    std::abort();
  }
}

void ExpectedId(const Napi::CallbackInfo& info, size_t i, double* dev, double* ino) {
  *dev = -1;
  *ino = -1;
  if (info.Length() <= i || !info[i].IsObject()) return;
  Napi::Object id = info[i].As<Napi::Object>();
  if (!id.Get("dev").IsNumber() || !id.Get("ino").IsNumber()) return;
  *dev = id.Get("dev").As<Napi::Number>().DoubleValue();
  *ino = id.Get("ino").As<Napi::Number>().DoubleValue();
}

// openPath(path) -> fd. O_NONBLOCK so that a FIFO at the path cannot block the event loop.
static Napi::Value OpenPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) throw SysError(env, "open", errno);
  return Napi::Number::New(env, fd);
}

// nsInfo(fd) -> { dev, ino, mode, nsfs, nstype }. Throws on fstat failure (EBADF). nstype is the
// CLONE_NEW* flag from NS_GET_NSTYPE, or -1 when the fd is not a namespace file at all.
static Napi::Value NsInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  struct stat st;
  if (fstat(fd, &st) < 0) throw SysError(env, "fstat", errno);
  struct statfs sfs;
  bool nsfs = fstatfs(fd, &sfs) == 0 && sfs.f_type == NSFS_MAGIC;
  int nstype = nsfs ? ioctl(fd, NS_GET_NSTYPE) : -1;
  Napi::Object out = Napi::Object::New(env);
  out.Set("dev", Napi::Number::New(env, static_cast<double>(st.st_dev)));
  out.Set("ino", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  out.Set("mode", Napi::Number::New(env, st.st_mode));
  out.Set("nsfs", Napi::Boolean::New(env, nsfs));
  out.Set("nstype", Napi::Number::New(env, nstype));
  return out;
}

// closeFd(fd): close(2) for fds this addon handed out. fs.closeSync would do, except that in a
// worker thread Node warns about closing fds it did not open itself.
static Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  // Linux always releases the fd, even when close reports EINTR: never retry.
  if (close(fd) < 0 && errno == EBADF) throw SysError(env, "close", EBADF);
  return env.Undefined();
}

void InitNetns(Napi::Env env, Napi::Object exports) {
  // A failure here is reported by the first switch, which tries again.
  int err = 0;
  if (home.fd < 0) OpenHome(&err);
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("openPath", Napi::Function::New(env, OpenPath, "openPath"));
  exports.Set("nsInfo", Napi::Function::New(env, NsInfo, "nsInfo"));
  // The CLONE_NEWNET value, so that TypeScript need not hard-code it.
  exports.Set("CLONE_NEWNET", Napi::Number::New(env, CLONE_NEWNET));
}

}  // namespace weir
