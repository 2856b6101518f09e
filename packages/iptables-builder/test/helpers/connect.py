"""TCP/UDP exchanges for the capture tests, run inside a netns with `ip netns exec`.

Reads requests from stdin, one per line: "HOST PORT [--mark N] [--source IP] [--udp]", and for each
prints the line the listener answered, or "error <reason>". Prints "ready" first. One process per
netns keeps the tests fast (no interpreter start per connection).
"""
import socket
import sys


def exchange(args):
    host, port = args[0], int(args[1])
    mark = int(args[args.index("--mark") + 1], 0) if "--mark" in args else None
    source = args[args.index("--source") + 1] if "--source" in args else None
    udp = "--udp" in args
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if source is not None:
            s.bind((source, 0))
        if udp:
            s.sendto(b"q", (host, port))
            return s.recv(2048).decode().strip()
        s.connect((host, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(2048)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()
    except OSError as e:
        return "error %s" % e
    finally:
        s.close()


print("ready", flush=True)
for line in sys.stdin:
    if line.strip():
        print(exchange(line.split()), flush=True)
