"""A hostile ztunnel: connects to the agent's ZdsServer once per scenario and misbehaves.
argv: <socket path> <netns path of the one enrolled pod>"""
import os
import socket
import sys

from zds_wire import ACK, HELLO_V1, drain_until_eof, ld, recv_record, report

path, netns_path = sys.argv[1], sys.argv[2]


def connect():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    return sock


def hello_then(reply, fds=()):
    """Valid hello, then answer the snapshot's first record (the Add) with `reply`."""
    def run(sock):
        sock.send(HELLO_V1)
        data, nfds = recv_record(sock)
        assert data is not None and nfds == 1, f"expected the Add with its fd, got {data!r} {nfds}"
        socket.send_fds(sock, [reply], list(fds))
    return run


def send(record, fds=()):
    def run(sock):
        socket.send_fds(sock, [record], list(fds)) if fds else sock.send(record)
    return run


def unsolicited(sock):
    sock.send(HELLO_V1)
    for _ in range(2):  # the Add, then SnapshotSent
        data, _ = recv_record(sock)
        assert data is not None
        sock.send(ACK)
    sock.send(ACK)  # nobody asked


nsfd = os.open(netns_path, os.O_RDONLY)
scenarios = [
    ("hello-version-0", send(b"\x08\x00")),
    ("empty-record", send(b"")),
    ("garbage", send(b"\xff\xff\xff\xff\xff")),
    ("oversized", send(HELLO_V1 + ld(15, b"x" * 1990))),
    ("kernel-truncated", send(b"\x00" * 70000)),
    ("hello-with-fd", send(HELLO_V1, [nsfd])),
    ("two-fds-on-ack", hello_then(ACK, [nsfd, nsfd])),
    ("truncated-ack", hello_then(b"\x0a\x05\x0a")),
    ("unknown-oneof-ack", hello_then(ld(2, b""))),
    ("unsolicited-ack", unsolicited),
]
for name, run in scenarios:
    sock = connect()
    run(sock)
    got, eof = drain_until_eof(sock)
    report({"scenario": name, "received": got, "eof": eof})
    sock.close()

# A well-behaved ztunnel afterwards gets the whole snapshot: the agent recovered.
sock = connect()
sock.send(HELLO_V1)
sock.settimeout(5)
data, fds, _, _ = socket.recv_fds(sock, 2048, 4)
same = len(fds) == 1 and os.fstat(fds[0]).st_ino == os.fstat(nsfd).st_ino
for fd in fds:
    os.close(fd)
sock.send(ACK)
snap, _ = recv_record(sock)
sock.send(ACK)
report({"scenario": "good", "add": data.hex(), "same_netns": same, "then": snap.hex() if snap else None})
sock.close()
os.close(nsfd)
