"""Hand-rolled ZDS wire bytes for the hostile test peers: no protobuf library, no Weir code."""
import json
import os
import socket
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, payload):
    """A length-delimited field: tag, length, bytes."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def s(field, text):
    return ld(field, text.encode())


HELLO_V1 = b"\x08\x01"
ACK = ld(1, b"")  # WorkloadResponse{ack: Ack{}}


def read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def nack_text(record):
    """The Ack.error of a WorkloadResponse record ("" for an ack), or None when it is not one."""
    if len(record) < 2 or record[0] != 0x0A:
        return None
    n, i = read_varint(record, 1)
    inner = record[i:i + n]
    if not inner:
        return ""
    if inner[0] != 0x0A:
        return None
    m, j = read_varint(inner, 1)
    return inner[j:j + m].decode(errors="replace")


def workload_info(name, ns, sa):
    return s(1, name) + s(2, ns) + s(3, sa)


def add(uid, info=True):
    body = s(1, uid) + (ld(2, workload_info("web-0", "default", "web")) if info else b"")
    return ld(1, body)


def keep(uid):
    return ld(5, s(1, uid))


def dele(uid):
    return ld(2, s(2, uid))


SNAPSHOT_SENT = ld(3, b"")


def recv_record(sock, timeout=5.0):
    """(data, fds) of one record; data None at EOF or on timeout. Received fds are closed."""
    sock.settimeout(timeout)
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 17, 8)
    except (socket.timeout, ConnectionResetError):
        return None, 0
    for fd in fds:
        os.close(fd)
    if not data and not fds:
        return None, 0
    return data, len(fds)


def drain_until_eof(sock, timeout=5.0):
    """Every record until the peer hangs up; eof False if it never did."""
    got = []
    while True:
        data, _ = recv_record(sock, timeout)
        if data is None:
            break
        got.append(data.hex())
    sock.settimeout(0.2)
    try:
        eof = sock.recv(1) == b""
    except socket.timeout:
        eof = False
    except ConnectionResetError:
        eof = True
    return got, eof


def report(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
