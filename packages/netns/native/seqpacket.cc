// AF_UNIX SOCK_SEQPACKET: one record per sendmsg/recvmsg, with SCM_RIGHTS fds riding along.
// Every call is nonblocking; EAGAIN is returned as a value so that TypeScript can wait on a poller.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <vector>

#include "common.h"

namespace weir {

namespace {

// Largest record we accept; bigger ones arrive with MSG_TRUNC and are reported as errors.
constexpr size_t kMaxRecord = 64 * 1024;
// SCM_MAX_FD in the kernel: no more fds can ride on one record.
constexpr size_t kMaxFds = 253;

void FillAddr(Napi::Env env, const std::string& path, sockaddr_un* sun, socklen_t* len) {
  std::memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sun->sun_path)) throw SysError(env, "bind", ENAMETOOLONG);
  std::memcpy(sun->sun_path, path.c_str(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

std::string PathArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "path must be a string");
  return info[0].As<Napi::String>();
}

}  // namespace

// seqListen(path, backlog, mode) -> fd. chmod happens before listen(), so no peer can connect
// while the socket file still has umask permissions.
static Napi::Value SeqListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info);
  int backlog = IntArg(info, 1, "backlog");
  int mode = IntArg(info, 2, "mode");
  sockaddr_un sun;
  socklen_t len;
  FillAddr(env, path, &sun, &len);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw SysError(env, "socket", errno);
  const char* call = nullptr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sun), len) < 0) {
    call = "bind";
  } else if (chmod(path.c_str(), static_cast<mode_t>(mode)) < 0) {
    call = "chmod";
  } else if (listen(fd, backlog) < 0) {
    call = "listen";
  }
  if (call) {
    int err = errno;
    close(fd);
    if (std::strcmp(call, "bind") != 0) unlink(path.c_str());
    throw SysError(env, call, err);
  }
  return Napi::Number::New(env, fd);
}

// seqAccept(fd) -> new fd, or -1 when nothing is pending.
static Napi::Value SeqAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  int c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EINTR)
      return Napi::Number::New(env, -1);
    throw SysError(env, "accept4", errno);
  }
  return Napi::Number::New(env, c);
}

// seqConnect(path) -> fd, or -1 when the listener's backlog is full (AF_UNIX answers EAGAIN
// instead of EINPROGRESS; the caller retries).
static Napi::Value SeqConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info);
  sockaddr_un sun;
  socklen_t len;
  FillAddr(env, path, &sun, &len);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw SysError(env, "socket", errno);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sun), len) < 0) {
    int err = errno;
    close(fd);
    if (err == EAGAIN) return Napi::Number::New(env, -1);
    throw SysError(env, "connect", err);
  }
  return Napi::Number::New(env, fd);
}

// seqSend(fd, data, fds) -> true when sent, false on EAGAIN (nothing was sent: records are atomic).
static Napi::Value SeqSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  if (info.Length() < 3 || !info[1].IsTypedArray() || !info[2].IsArray())
    throw Napi::TypeError::New(env, "seqSend(fd, Uint8Array, number[])");
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
  Napi::Array fdArr = info[2].As<Napi::Array>();
  size_t nfds = fdArr.Length();
  if (nfds > kMaxFds) throw SysError(env, "sendmsg", ETOOMANYREFS);

  iovec iov{data.Data(), data.ByteLength()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (nfds > 0) {
    control.assign(CMSG_SPACE(nfds * sizeof(int)), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    int* out = reinterpret_cast<int*>(CMSG_DATA(cm));
    for (size_t i = 0; i < nfds; i++) out[i] = fdArr.Get(i).ToNumber().Int32Value();
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    throw SysError(env, "sendmsg", errno);
  }
  return Napi::Boolean::New(env, true);
}

// seqRecv(fd) -> null when nothing is pending; 0 at end of stream; otherwise
// [data: Buffer, fds: number[], flags: number]. When flags has MSG_TRUNC or MSG_CTRUNC the record
// is incomplete: its data is dropped and the fds that did arrive are already closed here.
static Napi::Value SeqRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  thread_local static char buf[kMaxRecord];
  alignas(cmsghdr) thread_local static char control[CMSG_SPACE(kMaxFds * sizeof(int))];
  iovec iov{buf, sizeof(buf)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    throw SysError(env, "recvmsg", errno);
  }
  std::vector<int> fds;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* p = reinterpret_cast<const int*>(CMSG_DATA(cm));
    for (size_t i = 0; i < count; i++) fds.push_back(p[i]);
  }
  if (n == 0 && fds.empty()) {
    // A zero-length read is either an empty record or the peer's close; the hang-up flag tells.
    pollfd p{fd, POLLRDHUP, 0};
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP))) return Napi::Number::New(env, 0);
  }
  int flags = msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC);
  Napi::Array out = Napi::Array::New(env, 3);
  Napi::Array jsFds = Napi::Array::New(env);
  if (flags) {
    for (int f : fds) close(f);
    out.Set(0u, env.Null());
  } else {
    out.Set(0u, Napi::Buffer<char>::Copy(env, buf, static_cast<size_t>(n)));
    for (size_t i = 0; i < fds.size(); i++) jsFds.Set(static_cast<uint32_t>(i), fds[i]);
  }
  out.Set(1u, jsFds);
  out.Set(2u, Napi::Number::New(env, flags));
  return out;
}

// dupFd(fd) -> a CLOEXEC duplicate, so that a queued send owns what it sends.
static Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) throw SysError(env, "fcntl(F_DUPFD_CLOEXEC)", errno);
  return Napi::Number::New(env, d);
}

void InitSeqpacket(Napi::Env env, Napi::Object exports) {
  exports.Set("seqListen", Napi::Function::New(env, SeqListen, "seqListen"));
  exports.Set("seqAccept", Napi::Function::New(env, SeqAccept, "seqAccept"));
  exports.Set("seqConnect", Napi::Function::New(env, SeqConnect, "seqConnect"));
  exports.Set("seqSend", Napi::Function::New(env, SeqSend, "seqSend"));
  exports.Set("seqRecv", Napi::Function::New(env, SeqRecv, "seqRecv"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("MSG_TRUNC", Napi::Number::New(env, MSG_TRUNC));
  exports.Set("MSG_CTRUNC", Napi::Number::New(env, MSG_CTRUNC));
  exports.Set("MAX_RECORD", Napi::Number::New(env, static_cast<double>(kMaxRecord)));
}

}  // namespace weir
