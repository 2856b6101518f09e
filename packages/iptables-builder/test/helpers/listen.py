"""Listeners for the capture tests, run inside a netns with `ip netns exec`.

usage: listen.py PORT[,PORT...] [--udp PORT,...]
Every TCP listener binds 0.0.0.0 with IP_TRANSPARENT (needed for TPROXY delivery) and answers each
connection with one line "<listener port> <local addr:port> <SO_ORIGINAL_DST or -> <peer addr:port>"
then closes.
UDP listeners answer each datagram the same way. Prints "ready" once all are bound; runs until killed.
"""
import selectors
import socket
import struct
import sys

IP_TRANSPARENT = 19
SO_ORIGINAL_DST = 80


def original_dst(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return "-"
    port, = struct.unpack("!H", raw[2:4])
    return "%s:%d" % (socket.inet_ntoa(raw[4:8]), port)


def main():
    tcp_ports = [int(p) for p in sys.argv[1].split(",") if p]
    udp_ports = [int(p) for p in sys.argv[3].split(",")] if len(sys.argv) > 3 and sys.argv[2] == "--udp" else []
    sel = selectors.DefaultSelector()
    for port in tcp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        sel.register(s, selectors.EVENT_READ, ("tcp", port))
    for port in udp_ports:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", port))
        sel.register(u, selectors.EVENT_READ, ("udp", port))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            if kind == "tcp":
                conn, peer = key.fileobj.accept()
                local = "%s:%d" % conn.getsockname()
                conn.sendall(("%d %s %s %s:%d\n" % (port, local, original_dst(conn), peer[0], peer[1])).encode())
                conn.close()
            else:
                _data, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(("%d udp -\n" % port).encode(), peer)


main()
