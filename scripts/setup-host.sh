#!/usr/bin/env bash
# Installs the Debian packages Weir's tests, benchmarks and sandbox use. Idempotent; needs root.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "setup-host: run as root (it installs Debian packages with apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iptables nftables iproute2 ipset kmod \
  containernetworking-plugins \
  nghttp2-proxy nghttp2-client tinyproxy stunnel4 socat curl \
  golang-go python3-h2 protobuf-compiler libprotobuf-dev \
  iperf3 wrk tcpdump dnsutils dnsmasq-base \
  libcap2-bin util-linux procps psmisc strace \
  podman buildah runc debootstrap \
  >/dev/null
