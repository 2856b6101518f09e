// TCP and UDP sockets created inside a network namespace, and SO_ORIGINAL_DST.
//
// The one rule of this file: setns into the target, create and configure the socket, setns back,
// all inside one native call on the calling thread. A socket keeps the namespace it was created in,
// so JavaScript never runs while the thread is in a foreign namespace.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>


#include "common.h"

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>, which clash with glibc.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

namespace weir {

namespace {

struct SockSpec {
  int family = 4;
  bool udp = false;
  bool hasMark = false;
  uint32_t mark = 0;
  bool transparent = false;
  bool freebind = false;
  bool reuseAddr = false;
  bool reusePort = false;
  bool noDelay = false;
  bool keepalive = false;
  int keepalives[3] = {0, 0, 0};  // TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT
  int ipv6Only = -1;  // -1: leave the kernel default
  bool bind = false;
  sockaddr_storage bindAddr{};
  socklen_t bindLen = 0;
  bool listen = false;
  int backlog = 511;
  bool connect = false;
  sockaddr_storage connectAddr{};
  socklen_t connectLen = 0;
};

struct Outcome {
  int fd = -1;
  int err = 0;
  const char* syscall = nullptr;
};

bool ParseAddr(int family, const std::string& text, int port, sockaddr_storage* out, socklen_t* len) {
  std::memset(out, 0, sizeof(*out));
  if (family == 4) {
    auto* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    *len = sizeof(*sin);
    return inet_pton(AF_INET, text.c_str(), &sin->sin_addr) == 1;
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(out);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(static_cast<uint16_t>(port));
  *len = sizeof(*sin6);
  return inet_pton(AF_INET6, text.c_str(), &sin6->sin6_addr) == 1;
}

Napi::Object AddrToJs(Napi::Env env, const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {0};
  Napi::Object out = Napi::Object::New(env);
  if (ss.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
    out.Set("family", 4);
    out.Set("port", ntohs(sin->sin_port));
  } else {
    auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
    out.Set("family", 6);
    out.Set("port", ntohs(sin6->sin6_port));
  }
  out.Set("address", std::string(buf));
  return out;
}

// SO_KEEPALIVE on with all three timers, as Istio's ztunnel sets them: timers first, SO_KEEPALIVE
// last, so the timer starts with the final values. Returns the failed call, or nullptr.
const char* SetKeepalive(int fd, const int values[3]) {
  static const int names[3] = {TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT};
  static const char* calls[3] = {"setsockopt(TCP_KEEPIDLE)", "setsockopt(TCP_KEEPINTVL)", "setsockopt(TCP_KEEPCNT)"};
  for (int i = 0; i < 3; i++)
    if (setsockopt(fd, IPPROTO_TCP, names[i], &values[i], sizeof(int)) < 0) return calls[i];
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0) return "setsockopt(SO_KEEPALIVE)";
  return nullptr;
}

// Only syscalls, no JS: runs while the thread may be in the target namespace.
Outcome MakeSocket(const SockSpec& s) {
  Outcome o;
  bool v6 = s.family == 6;
  int fd = socket(v6 ? AF_INET6 : AF_INET, (s.udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  s.udp ? IPPROTO_UDP : IPPROTO_TCP);
  if (fd < 0) return {-1, errno, "socket"};
  int one = 1;
  auto fail = [&](const char* call) {
    o.err = errno;
    o.syscall = call;
    close(fd);
    return o;
  };
  if (s.hasMark && setsockopt(fd, SOL_SOCKET, SO_MARK, &s.mark, sizeof(s.mark)) < 0)
    return fail("setsockopt(SO_MARK)");
  if (s.transparent) {
    int r = v6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
               : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
    if (r < 0) return fail(v6 ? "setsockopt(IPV6_TRANSPARENT)" : "setsockopt(IP_TRANSPARENT)");
  }
  if (s.freebind) {
    int r = v6 ? setsockopt(fd, SOL_IPV6, IPV6_FREEBIND, &one, sizeof(one))
               : setsockopt(fd, SOL_IP, IP_FREEBIND, &one, sizeof(one));
    if (r < 0) return fail(v6 ? "setsockopt(IPV6_FREEBIND)" : "setsockopt(IP_FREEBIND)");
  }
  if (s.reuseAddr && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
    return fail("setsockopt(SO_REUSEADDR)");
  if (s.reusePort && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
    return fail("setsockopt(SO_REUSEPORT)");
  if (v6 && s.ipv6Only >= 0 && setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, &s.ipv6Only, sizeof(s.ipv6Only)) < 0)
    return fail("setsockopt(IPV6_V6ONLY)");
  // Before connect, so that not even the first segment waits for an ACK (Nagle).
  if (!s.udp && s.noDelay && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
    return fail("setsockopt(TCP_NODELAY)");
  // In the same call rather than a setTcpKeepalive per socket; a listener's accepted sockets inherit them.
  if (!s.udp && s.keepalive) {
    if (const char* call = SetKeepalive(fd, s.keepalives)) return fail(call);
  }
  if (s.bind && bind(fd, reinterpret_cast<const sockaddr*>(&s.bindAddr), s.bindLen) < 0) return fail("bind");
  if (s.listen && listen(fd, s.backlog) < 0) return fail("listen");
  // Nonblocking: EINPROGRESS is the normal answer; completion is watched from JS with a poller.
  if (s.connect && connect(fd, reinterpret_cast<const sockaddr*>(&s.connectAddr), s.connectLen) < 0 &&
      errno != EINPROGRESS)
    return fail("connect");
  o.fd = fd;
  return o;
}

std::string StrOpt(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
}

}  // namespace

// createTcp(netnsFd, spec, id?) / createUdp(netnsFd, spec, id?) -> fd. spec is validated by
// TypeScript; here only shapes are checked. id ({dev, ino}) is the Netns handle's identity: the
// socket is then made in that namespace or not at all (ESTALE), see EnterNetns. UDP sockets are never listened on or connected.
static Napi::Value CreateSocket(const Napi::CallbackInfo& info, bool udp) {
  Napi::Env env = info.Env();
  int nsFd = IntArg(info, 0, "netns fd");
  if (info.Length() < 2 || !info[1].IsObject()) throw Napi::TypeError::New(env, "spec must be an object");
  Napi::Object o = info[1].As<Napi::Object>();

  SockSpec s;
  s.udp = udp;
  s.family = o.Get("family").ToNumber().Int32Value() == 6 ? 6 : 4;
  if (o.Get("mark").IsNumber()) {
    s.hasMark = true;
    s.mark = o.Get("mark").As<Napi::Number>().Uint32Value();
  }
  s.transparent = o.Get("transparent").ToBoolean();
  s.freebind = o.Get("freebind").ToBoolean();
  s.reuseAddr = o.Get("reuseAddr").ToBoolean();
  s.reusePort = o.Get("reusePort").ToBoolean();
  s.noDelay = o.Get("noDelay").ToBoolean();
  Napi::Value keepIdle = o.Get("keepIdle");
  if (!udp && keepIdle.IsNumber()) {
    s.keepalive = true;
    s.keepalives[0] = keepIdle.As<Napi::Number>().Int32Value();
    s.keepalives[1] = o.Get("keepIntvl").ToNumber().Int32Value();
    s.keepalives[2] = o.Get("keepCnt").ToNumber().Int32Value();
  }
  if (o.Get("ipv6Only").IsBoolean()) s.ipv6Only = o.Get("ipv6Only").ToBoolean() ? 1 : 0;
  std::string bindAddress = StrOpt(o, "bindAddress");
  if (!bindAddress.empty()) {
    s.bind = true;
    int port = o.Get("bindPort").ToNumber().Int32Value();
    if (!ParseAddr(s.family, bindAddress, port, &s.bindAddr, &s.bindLen))
      throw Napi::TypeError::New(env, "bad bind address " + bindAddress);
  }
  s.listen = !udp && o.Get("listen").ToBoolean();
  if (o.Get("backlog").IsNumber()) s.backlog = o.Get("backlog").ToNumber().Int32Value();
  std::string connectAddress = StrOpt(o, "connectAddress");
  if (!udp && !connectAddress.empty()) {
    s.connect = true;
    int port = o.Get("connectPort").ToNumber().Int32Value();
    if (!ParseAddr(s.family, connectAddress, port, &s.connectAddr, &s.connectLen))
      throw Napi::TypeError::New(env, "bad connect address " + connectAddress);
  }

  double expectDev, expectIno;
  ExpectedId(info, 2, &expectDev, &expectIno);
  NetnsSwitch sw = EnterNetns(nsFd, expectDev, expectIno);
  if (sw.err != 0) throw SysError(env, sw.syscall, sw.err);
  Outcome out = MakeSocket(s);
  LeaveNetns(sw);
  if (out.fd < 0) throw SysError(env, out.syscall, out.err);
  return Napi::Number::New(env, out.fd);
}

static Napi::Value CreateTcp(const Napi::CallbackInfo& info) { return CreateSocket(info, false); }
static Napi::Value CreateUdp(const Napi::CallbackInfo& info) { return CreateSocket(info, true); }

// socketNetns(fd) -> nsfs fd of the namespace the socket lives in (SIOCGSKNS). The caller closes it.
static Napi::Value SocketNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  int ns = ioctl(fd, SIOCGSKNS);
  if (ns < 0) throw SysError(env, "ioctl(SIOCGSKNS)", errno);
  // SIOCGSKNS returns an fd without O_CLOEXEC.
  fcntl(ns, F_SETFD, FD_CLOEXEC);
  return Napi::Number::New(env, ns);
}

// socketError(fd) -> SO_ERROR (0 when a nonblocking connect succeeded).
static Napi::Value SocketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) throw SysError(env, "getsockopt(SO_ERROR)", errno);
  return Napi::Number::New(env, err);
}

// connectedNow(fd) -> true when a nonblocking connect has already completed without error (POLLOUT,
// no POLLERR/POLLHUP). A connect to a local address (the app in the pod, over lo) usually finishes
// inside connect() itself; the caller can then skip waiting a loop turn for the poller.
static Napi::Value ConnectedNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  pollfd p{fd, POLLOUT, 0};
  int r = poll(&p, 1, 0);
  if (r < 0) throw SysError(env, "poll", errno);
  return Napi::Boolean::New(env, r == 1 && (p.revents & (POLLERR | POLLHUP | POLLNVAL)) == 0 && (p.revents & POLLOUT) != 0);
}

// localAddress(fd) -> { family, address, port } from getsockname.
static Napi::Value LocalAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) throw SysError(env, "getsockname", errno);
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) throw SysError(env, "getsockname", EAFNOSUPPORT);
  return AddrToJs(env, ss);
}

// originalDst(fd) -> { family, address, port }: SO_ORIGINAL_DST (IPv4 conntrack, also for
// v4-mapped connections on a dual-stack socket), then IP6T_SO_ORIGINAL_DST.
static Napi::Value OriginalDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  sockaddr_storage ss{};
  socklen_t len = sizeof(sockaddr_in);
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len) == 0) return AddrToJs(env, ss);
  int err4 = errno;
  if (err4 == EBADF || err4 == ENOTSOCK) throw SysError(env, "getsockopt(SO_ORIGINAL_DST)", err4);
  std::memset(&ss, 0, sizeof(ss));
  len = sizeof(sockaddr_in6);
  if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len) == 0) return AddrToJs(env, ss);
  int err6 = errno;
  // Report the IPv4 failure for IPv4 sockets, the IPv6 one otherwise.
  sockaddr_storage self{};
  socklen_t slen = sizeof(self);
  bool isV4 = getsockname(fd, reinterpret_cast<sockaddr*>(&self), &slen) == 0 && self.ss_family == AF_INET;
  if (isV4) throw SysError(env, "getsockopt(SO_ORIGINAL_DST)", err4);
  throw SysError(env, "getsockopt(IP6T_SO_ORIGINAL_DST)", err6);
}

// setTcpKeepalive(fd, idleS, intervalS, count): SO_KEEPALIVE on plus all three timers, as Istio's
// ztunnel sets them. Node's setKeepAlive only sets TCP_KEEPIDLE (libuv forces intvl 1 s, cnt 10).
// Ranges are checked in TypeScript; the kernel's EINVAL is the backstop.
static Napi::Value SetTcpKeepalive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  int values[3] = {IntArg(info, 1, "idle"), IntArg(info, 2, "interval"), IntArg(info, 3, "count")};
  if (const char* call = SetKeepalive(fd, values)) throw SysError(env, call, errno);
  return env.Undefined();
}

// tcpKeepalive(fd) -> [SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT] as the kernel has them.
static Napi::Value TcpKeepalive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  static const int levels[4] = {SOL_SOCKET, IPPROTO_TCP, IPPROTO_TCP, IPPROTO_TCP};
  static const int names[4] = {SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT};
  static const char* calls[4] = {"getsockopt(SO_KEEPALIVE)", "getsockopt(TCP_KEEPIDLE)", "getsockopt(TCP_KEEPINTVL)",
                                 "getsockopt(TCP_KEEPCNT)"};
  Napi::Array out = Napi::Array::New(env, 4);
  for (uint32_t i = 0; i < 4; i++) {
    int v = 0;
    socklen_t len = sizeof(v);
    if (getsockopt(fd, levels[i], names[i], &v, &len) < 0) throw SysError(env, calls[i], errno);
    out.Set(i, v);
  }
  return out;
}

void InitTcp(Napi::Env env, Napi::Object exports) {
  exports.Set("createTcp", Napi::Function::New(env, CreateTcp, "createTcp"));
  exports.Set("createUdp", Napi::Function::New(env, CreateUdp, "createUdp"));
  exports.Set("socketNetns", Napi::Function::New(env, SocketNetns, "socketNetns"));
  exports.Set("socketError", Napi::Function::New(env, SocketError, "socketError"));
  exports.Set("connectedNow", Napi::Function::New(env, ConnectedNow, "connectedNow"));
  exports.Set("localAddress", Napi::Function::New(env, LocalAddress, "localAddress"));
  exports.Set("originalDst", Napi::Function::New(env, OriginalDst, "originalDst"));
  exports.Set("setTcpKeepalive", Napi::Function::New(env, SetTcpKeepalive, "setTcpKeepalive"));
  exports.Set("tcpKeepalive", Napi::Function::New(env, TcpKeepalive, "tcpKeepalive"));
}

}  // namespace weir
