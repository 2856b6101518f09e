// Entry point of the @weir/netns addon: network namespaces, TCP sockets made inside them,
// SO_ORIGINAL_DST, AF_UNIX SOCK_SEQPACKET records with SCM_RIGHTS, netlink exchanges, programs
// spawned and sysctls read or written in a netns, and an fd poller on the Node event loop.
// Everything else lives in TypeScript.
#include "common.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  weir::InitNetns(env, exports);
  weir::InitTcp(env, exports);
  weir::InitSeqpacket(env, exports);
  weir::InitPoller(env, exports);
  weir::InitNetlink(env, exports);
  weir::InitSpawn(env, exports);
  return exports;
}

NODE_API_MODULE(weir_netns, Init)
