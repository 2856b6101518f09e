// One netlink exchange inside a network namespace: the node agent's policy routing (ip rule/route)
// without running `ip`, which on a loaded node costs a fork and an exec (milliseconds of CPU) per pod.
//
// As in tcp.cc: setns into the target, create the socket, setns back, all inside one native call on
// the calling thread (a netlink socket talks to the namespace it was created in). The exchange
// itself is synchronous: the kernel answers rtnetlink requests while handling the send, so the
// receives find the replies queued. One deadline bounds the whole receive phase, for a caller
// expecting more terminal replies than the kernel sends.
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <string>

#include <vector>

#include "common.h"

namespace weir {

namespace {

// Receive phase bound: the kernel has queued every reply to a request before sendto returns, so
// this is only reached when the caller expects more replies than the kernel sends.
constexpr int kDeadlineMs = 2000;
// Upper bound of the receive-buffer charge (skb truesize, not payload) of one ack without the echoed
// request (NETLINK_CAP_ACK): a ~36-byte message in a small skb, well under 1 KiB on 64-bit kernels.
constexpr long kAckCharge = 2048;
// The default net.core.rmem_default; below it nothing needs raising.
constexpr long kDefaultRcvbuf = 208 * 1024;
// Dump datagrams are capped by the kernel at 32 KiB (netlink_recvmsg's max_recvmsg_len), acks are
// tiny; a larger datagram (one huge object) is reported as EMSGSIZE, never silently cut.
constexpr size_t kRecvBuf = 64 * 1024;

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

struct Closer {
  int fd;
  ~Closer() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

// netlinkExchange(netnsFd, protocol, request, replies, id?) -> Buffer: sends `request` (one or more
// netlink messages) on a fresh socket made in the netns, then receives until `replies` terminal
// messages (NLMSG_ERROR, which is also the ACK, or NLMSG_DONE) have arrived; returns every byte
// received, for the caller to parse. Each request message must ask for an ACK or be a dump.
static Napi::Value NetlinkExchange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int nsFd = IntArg(info, 0, "netnsFd");
  int protocol = IntArg(info, 1, "protocol");
  if (info.Length() < 3 || !info[2].IsTypedArray()) throw Napi::TypeError::New(env, "request must be a Uint8Array");
  Napi::Uint8Array req = info[2].As<Napi::Uint8Array>();
  int replies = IntArg(info, 3, "replies");

  double expectDev, expectIno;
  ExpectedId(info, 4, &expectDev, &expectIno);
  NetnsSwitch sw = EnterNetns(nsFd, expectDev, expectIno);
  if (sw.err != 0) throw SysError(env, sw.syscall, sw.err);
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  int sockErr = errno;
  LeaveNetns(sw);
  if (fd < 0) throw SysError(env, "socket(AF_NETLINK)", sockErr);
  Closer closer{fd};

  // Every ack is queued during the send, each charged against the receive buffer; past the default
  // (~200 acks) the kernel drops the rest and the first recv fails with ENOBUFS although every
  // request was applied. So: acks without the echoed request, and room for all expected replies
  // (FORCE passes net.core.rmem_max with CAP_NET_ADMIN; plain SO_RCVBUF is the best effort without).
  int one = 1;
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
  long want = static_cast<long>(replies) * kAckCharge;
  if (want > kDefaultRcvbuf) {
    int size = want > INT_MAX / 2 ? INT_MAX / 2 : static_cast<int>(want);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0) {
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    }
  }
  struct sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  ssize_t sent = sendto(fd, req.Data(), req.ByteLength(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel));
  if (sent < 0) throw SysError(env, "sendto(netlink)", errno);
  if (static_cast<size_t>(sent) != req.ByteLength()) throw SysError(env, "sendto(netlink)", EMSGSIZE);

  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(kRecvBuf);
  int seen = 0;
  const int64_t deadline = NowMs() + kDeadlineMs;
  while (seen < replies) {
    // Non-blocking: queued replies cost one syscall each; poll only when the queue is empty.
    ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      int64_t left = deadline - NowMs();
      if (left <= 0) throw SysError(env, "recv(netlink)", ETIMEDOUT);
      struct pollfd p = {fd, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) throw SysError(env, "poll(netlink)", errno);
      continue;
    }
    if (n < 0) throw SysError(env, "recv(netlink)", errno);
    if (n == 0) throw SysError(env, "recv(netlink)", ECONNRESET);
    if (static_cast<size_t>(n) > buf.size()) {
      Napi::Error e = SysError(env, "recv(netlink)", EMSGSIZE);
      e.Set("message", Napi::String::New(env, "recv(netlink): netlinkExchange got a reply datagram of " + std::to_string(n) +
                                                   " bytes, larger than its " + std::to_string(buf.size()) + "-byte buffer"));
      throw e;
    }
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_DONE) seen++;
    }
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("netlinkExchange", Napi::Function::New(env, NetlinkExchange, "netlinkExchange"));
}

}  // namespace weir
