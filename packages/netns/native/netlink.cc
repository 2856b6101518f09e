// One netlink exchange inside a network namespace: the node agent's policy routing (ip rule/route)
// without running `ip`, which on a loaded node costs a fork and an exec (milliseconds of CPU) per pod.
//
// As in tcp.cc: setns into the target, create the socket, setns back, all inside one native call on
// the calling thread (a netlink socket talks to the namespace it was created in). The exchange
// itself is synchronous: the kernel answers rtnetlink requests while handling the send, so the
// receives find the replies queued (a receive timeout guards against a kernel that does not).
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <vector>

#include "common.h"

namespace weir {

namespace {

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

  struct timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  struct sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  ssize_t sent = sendto(fd, req.Data(), req.ByteLength(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel));
  if (sent < 0) throw SysError(env, "sendto(netlink)", errno);
  if (static_cast<size_t>(sent) != req.ByteLength()) throw SysError(env, "sendto(netlink)", EMSGSIZE);

  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(64 * 1024);
  int seen = 0;
  while (seen < replies) {
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw SysError(env, "recv(netlink)", errno == EAGAIN ? ETIMEDOUT : errno);
    if (n == 0) throw SysError(env, "recv(netlink)", ECONNRESET);
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
