{
  "targets": [
    {
      "target_name": "weir_netns",
      "sources": [
        "native/addon.cc",
        "native/netns.cc",
        "native/tcp.cc",
        "native/seqpacket.cc",
        "native/poller.cc",
        "native/netlink.cc",
        "native/spawn.cc"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "cflags_cc": ["-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
