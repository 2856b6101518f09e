"""HBONE client written with Debian's python3-h2: CONNECT through a Weir server to an echo.

usage: h2client.py HOST PORT AUTHORITY CERT KEY CA NBYTES [METHOD [noread]]
Prints one JSON line: {"status": ..., "ok": ..., "echoed": n}.
With `noread`, after the 200 it prints {"status": 200, "noread": true} and then never reads the
socket nor opens its flow-control window again (a slow client), until killed.
"""
import hashlib
import json
import os
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

host, port, authority, cert, key, ca, nbytes = sys.argv[1:8]
method = sys.argv[8] if len(sys.argv) > 8 else "CONNECT"
noread = len(sys.argv) > 9 and sys.argv[9] == "noread"
nbytes = int(nbytes)

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.check_hostname = False  # identity is a SPIFFE URI SAN, not a hostname
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection((host, int(port))))
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()

# CONNECT has no :scheme/:path, which h2 would otherwise insist on.
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
conn.initiate_connection()
sid = conn.get_next_available_stream_id()
headers = [(":method", method), (":authority", authority)]
if method != "CONNECT":
    headers += [(":scheme", "https"), (":path", "/")]
conn.send_headers(sid, headers)
sock.sendall(conn.data_to_send())

data = os.urandom(nbytes)
status = None
received = bytearray()
offset = -1  # bytes of `data` sent; -1 until the 200 arrives
ended = False


def pump():
    """Send as much of `data` as flow control allows, then END_STREAM once all is out."""
    global offset
    while 0 <= offset < len(data):
        n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(data) - offset)
        if n <= 0:
            return
        conn.send_data(sid, data[offset:offset + n])
        offset += n
    if offset == len(data):
        conn.end_stream(sid)
        offset += 1


while not ended:
    chunk = sock.recv(65536)
    if not chunk:
        break
    for ev in conn.receive_data(chunk):
        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
            status = int(dict(ev.headers)[b":status"])
            if status == 200 and noread:
                print(json.dumps({"status": 200, "noread": True}), flush=True)
                time.sleep(3600)
            if status == 200:
                offset = 0
            else:
                ended = True
        elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
            received += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
            ended = True
    pump()
    sock.sendall(conn.data_to_send())

ok = status == 200 and hashlib.sha256(bytes(received)).digest() == hashlib.sha256(data).digest()
print(json.dumps({"status": status, "ok": ok, "echoed": len(received)}))
sock.close()
