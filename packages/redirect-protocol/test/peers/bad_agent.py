"""A hostile node agent: listens, and sends one bad record to each ZdsClient connection.
argv: <socket path> <netns path>"""
import os
import socket
import sys

from zds_wire import HELLO_V1, SNAPSHOT_SENT, add, dele, drain_until_eof, keep, ld, nack_text, recv_record, report

path, netns_path = sys.argv[1], sys.argv[2]
nsfd = os.open(netns_path, os.O_RDONLY)
filefd = os.open("/proc/self/status", os.O_RDONLY)
ADD = add("uid-a")


def one(record, fds=()):
    def run(sock):
        socket.send_fds(sock, [record], list(fds)) if fds else sock.send(record)
    return run


def after_snapshot(record):
    def run(sock):
        sock.send(SNAPSHOT_SENT)
        data, _ = recv_record(sock)
        assert data is not None and nack_text(data) == "", f"SnapshotSent not acked: {data!r}"
        sock.send(record)
    return run


scenarios = [
    ("garbage", one(b"\xff\xff\xff\xff")),
    ("truncated-add", one(ADD[: len(ADD) // 2], [nsfd])),
    ("oversized", one(dele("x" * 2000))),
    ("kernel-truncated", one(b"\x00" * 70000, [nsfd])),
    ("empty-record", one(b"")),
    ("unknown-oneof", one(ld(7, b""))),
    ("add-two-fds", one(ADD, [nsfd, nsfd])),
    ("add-no-fd", one(ADD)),
    ("del-with-fd", one(dele("uid-a"), [nsfd])),
    ("keep-with-fd", one(keep("uid-a"), [nsfd])),
    ("add-no-workload-info", one(add("uid-a", info=False), [nsfd])),
    ("add-fd-not-netns", one(ADD, [filefd])),
    ("keep-after-snapshot", after_snapshot(keep("uid-a"))),
    ("second-snapshot", after_snapshot(SNAPSHOT_SENT)),
]

try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
srv.bind(path)
srv.listen(8)
srv.settimeout(15)
report({"listening": path})

for name, run in scenarios:
    conn, _ = srv.accept()
    hello, _ = recv_record(conn)
    run(conn)
    got, eof = drain_until_eof(conn)
    report({"scenario": name, "hello": hello.hex() if hello else None,
            "nacks": [nack_text(bytes.fromhex(r)) for r in got], "eof": eof})
    conn.close()

# A good record on the next connection: the client came back clean and still works.
conn, _ = srv.accept()
hello, _ = recv_record(conn)
socket.send_fds(conn, [ADD], [nsfd])
data, _ = recv_record(conn)
report({"scenario": "good", "hello": hello.hex() if hello else None, "ack": nack_text(data) if data else None})
conn.close()
srv.close()
os.unlink(path)
