"""A stand-in for an Istio/Envoy sidecar in the tests: accepts the application's plaintext
connection that iptables REDIRECTed to port 15001, drops to uid 1337 (Istio's proxy uid) and
names itself "envoy", and opens a TLS connection to the original destination (SO_ORIGINAL_DST),
relaying the application's bytes into it. One connection, then it exits. After the upstream
failure it resets the application's connection, or with the argument `close` closes it
cleanly."""

import ctypes
import os
import socket
import ssl
import struct
import sys

SO_ORIGINAL_DST = 80

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 15001))
listener.listen()
os.setgid(1337)
os.setuid(1337)
ctypes.CDLL(None).prctl(15, b"envoy", 0, 0, 0)  # PR_SET_NAME
print("ready", flush=True)

listener.settimeout(20)
app, _ = listener.accept()
raw = app.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
port = struct.unpack("!H", raw[2:4])[0]
host = socket.inet_ntoa(raw[4:8])
data = app.recv(4096)

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
try:
    upstream = socket.create_connection((host, port), timeout=10)
    tls = context.wrap_socket(upstream, server_hostname=host)
    tls.sendall(data)
    tls.recv(4096)
except (OSError, ssl.SSLError) as error:
    print(f"upstream failed: {error}", file=sys.stderr, flush=True)
# Like Envoy after an upstream failure: reset the application's connection (or close it).
if sys.argv[1:] != ["close"]:
    app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
app.close()
