// Opening and identifying network namespaces.
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "common.h"

namespace weir {

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
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("openPath", Napi::Function::New(env, OpenPath, "openPath"));
  exports.Set("nsInfo", Napi::Function::New(env, NsInfo, "nsInfo"));
  // The CLONE_NEWNET value, so that TypeScript need not hard-code it.
  exports.Set("CLONE_NEWNET", Napi::Number::New(env, CLONE_NEWNET));
}

}  // namespace weir
