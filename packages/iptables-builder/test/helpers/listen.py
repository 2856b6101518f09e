"""Listeners for the capture tests, run inside a netns with `ip netns exec`.

usage: listen.py PORT[,PORT...] [--udp PORT,...] [--v6]
Every TCP listener binds the any address (0.0.0.0, or :: with --v6) with IP(V6)_TRANSPARENT (needed
for TPROXY delivery) and answers each connection with one line
"<listener port> <local addr:port> <SO_ORIGINAL_DST or -> <peer addr:port>" (v6 as [addr]:port),
then closes. UDP listeners answer each datagram with "<port> udp -". Prints "ready" once all are
bound; runs until killed.
"""
import selectors
import socket
import struct
import sys

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST, at SOL_IPV6


def hostport(addr):
    return ("[%s]:%d" if ":" in addr[0] else "%s:%d") % (addr[0], addr[1])


def original_dst(conn, v6):
    try:
        if v6:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port, = struct.unpack("!H", raw[2:4])
            return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, = struct.unpack("!H", raw[2:4])
        return "%s:%d" % (socket.inet_ntoa(raw[4:8]), port)
    except OSError:
        return "-"


def main():
    args = sys.argv[1:]
    v6 = "--v6" in args
    tcp_ports = [int(p) for p in args[0].split(",") if p]
    udp_ports = [int(p) for p in args[args.index("--udp") + 1].split(",")] if "--udp" in args else []
    family = socket.AF_INET6 if v6 else socket.AF_INET
    anyaddr = "::" if v6 else "0.0.0.0"
    sel = selectors.DefaultSelector()
    for port in tcp_ports:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((anyaddr, port))
        s.listen(64)
        sel.register(s, selectors.EVENT_READ, ("tcp", port))
    for port in udp_ports:
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((anyaddr, port))
        sel.register(u, selectors.EVENT_READ, ("udp", port))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            if kind == "tcp":
                conn, peer = key.fileobj.accept()
                line = "%d %s %s %s\n" % (port, hostport(conn.getsockname()), original_dst(conn, v6), hostport(peer))
                conn.sendall(line.encode())
                conn.close()
            else:
                _data, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(("%d udp -\n" % port).encode(), peer)


main()
