#!/usr/bin/python3
"""What a TLS reverse proxy in front of Open WebUI costs a streamed chat: time to first token and
tokens/s through nginx and through Caddy (Debian 12's packages) beside the direct path, and each
proxy's memory. The figures behind README's choice of proxy for webui.tls.

    sudo bench/proxy.py [--runs 20] [--tokens 200] [--rate 200] [--nginx PATH] [--caddy PATH]

On this machine, no container: a stand-in for the streaming backend on 127.0.0.1 (an Ollama-style
/api/chat that answers NDJSON, one line per token at a fixed --rate, the first at once; and a
websocket, the way Open WebUI streams a chat to the browser over socket.io: after the upgrade, each
frame from the client starts a chat answered one frame a token at the same rate), and each proxy
on 127.0.0.1 serving HTTPS with a server certificate of a throw-away CA (python3-cryptography; the
client trusts that CA and nothing else). nginx runs localaid's own configuration, the one
localaid-https.service serves (localaid/provision/https/nginx.py: one worker, proxy_buffering
off, HTTP/1.1 to a kept-alive upstream, websockets passed), its paths moved into a temporary
directory; Caddy's reverse_proxy with flush_interval -1. The backend sets TCP_NODELAY, as Ollama's Go server does.

Each run is one chat over each transport on a connection already open (a browser's keep-alive or
websocket: the TLS handshake is measured apart, a fresh connection's first request): time to first
token from the request (or the websocket frame) to the first token, tokens/s from the first token
to the last. Median of --runs, modes interleaved (direct, nginx, caddy, direct, ...) so that drift
hits all alike. Memory: the PSS and RSS of the proxy's processes (master and worker) after the
runs. A chat a path cuts short is counted in a note and left out of the medians, and the path is
opened afresh. A proxy missing here is left out with a note: neither needs installing (nor its
service starting) for this, `apt-get download nginx caddy`, `dpkg-deb -x` each, and --nginx /
--caddy to the unpacked binaries.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # localaid's nginx.conf
from common import print_table  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

def nginx_conf(d: Path, port: int, backend: int) -> str:
    """localaid's own nginx.conf for webui.tls (localaid/provision/https/nginx.py: what
    localaid-https.service runs), its run-time paths moved into `d` and daemon off."""
    from dataclasses import replace

    from localaid.config import Config
    from localaid.provision.https import nginx
    c = Config()
    tls = replace(c.webui.tls, enabled=True, backend_port=backend)
    c = replace(c, webui=replace(c.webui, host="127.0.0.1", port=port, tls=tls))
    text = nginx.render(c, local_ca=False)
    for path in (nginx.CREDENTIALS, nginx.CACHE, nginx.RUNTIME):
        text = text.replace(path, str(d))
    return text.replace("error_log stderr warn;", "daemon off;\nerror_log stderr warn;")


CADDYFILE = """\
{{
    admin off
    auto_https off
    storage file_system {d}/caddy
}}
https://127.0.0.1:{port} {{
    tls {d}/server.crt {d}/server.key
    reverse_proxy 127.0.0.1:{backend} {{
        flush_interval -1
    }}
}}
"""


# ------------------------------------------------------------------ the streaming backend
class Stream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tokens, rate = 200, 200.0

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()  # as Ollama's (Go's) server does: each token leaves at once, not after an ACK
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        """A websocket (Open WebUI streams a chat to the browser over socket.io's): after the
        upgrade, each text frame from the client starts a chat, streamed back one frame a token."""
        if self.headers.get("Upgrade", "").lower() != "websocket":
            self.send_error(404)
            return
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept)
        self.wfile.flush()
        while ws_read(self.rfile) == b"go":
            t0 = time.monotonic()
            for i in range(self.tokens):
                time.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
                self.wfile.write(ws_frame(f" w{i}".encode()))
                self.wfile.flush()
            self.wfile.write(ws_frame(b"done"))
            self.wfile.flush()
        self.close_connection = True

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:  # the client asked to close: say so (a proxy would reuse it otherwise)
            self.send_header("Connection", "close")
        self.end_headers()
        t0 = time.monotonic()
        for i in range(self.tokens):
            time.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
            line = json.dumps({"message": {"role": "assistant", "content": f" w{i}"}, "done": False}) + "\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line.encode()))
            self.wfile.flush()
        end = json.dumps({"message": {"role": "assistant", "content": ""}, "done": True}) + "\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end.encode()))
        self.wfile.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's


def ws_frame(payload: bytes, mask: bool = False) -> bytes:
    """One final text frame (RFC 6455); a client's frames are masked."""
    n = len(payload)
    head = bytes([0x81]) + (bytes([n | 0x80 * mask]) if n < 126 else bytes([126 | 0x80 * mask]) + n.to_bytes(2, "big"))
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read(f) -> bytes:
    """The payload of the next frame from a file-like f (b"" at the end of the stream)."""
    head = f.read(2)
    if len(head) < 2:
        return b""
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    key = f.read(4) if head[1] & 0x80 else None
    data = f.read(n)
    return bytes(b ^ key[i % 4] for i, b in enumerate(data)) if key else data


# ------------------------------------------------------------------ a throw-away CA
def make_certs(d: Path) -> None:
    """ca.crt, server.crt and server.key (for 127.0.0.1) in d; the CA's key stays in memory."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench proxy CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(d / "server.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


# ------------------------------------------------------------------ the proxies
def start_proxy(kind: str, binary: str, d: Path, port: int, backend: int) -> subprocess.Popen:
    if kind == "nginx":
        (d / "nginx.conf").write_text(nginx_conf(d, port, backend))
        argv = [binary, "-p", str(d), "-c", str(d / "nginx.conf")]
    else:
        (d / "Caddyfile").write_text(CADDYFILE.format(d=d, port=port, backend=backend))
        argv = [binary, "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(d / f"{kind}.log", "w"),
                         env=dict(os.environ, HOME=str(d), XDG_DATA_HOME=str(d), XDG_CONFIG_HOME=str(d)),
                         start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p
        if p.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"{kind} did not start:\n{(d / f'{kind}.log').read_text()[-2000:]}")


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of pid and its children (nginx's worker), from /proc: PSS shares the pages the
    processes share (the master's and the worker's code), RSS counts them in each."""
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = dict(x.split(":", 1) for x in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:])
            rss, pss = rss + int(rollup["Rss"].split()[0]), pss + int(rollup["Pss"].split()[0])
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, KeyError, ValueError):
            pass
    return rss, pss


# ------------------------------------------------------------------ the client
def connect(port: int, tls: ssl.SSLContext | None) -> tuple[http.client.HTTPConnection, float]:
    t0 = time.perf_counter()
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=30) if tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=30))
    conn.connect()
    return conn, time.perf_counter() - t0


def ndjson_lines(resp: http.client.HTTPResponse):
    """Each line of a streamed body as soon as it is whole. (HTTPResponse.readline ends a line
    early where a proxy's chunk ends inside it: read1 and a buffer do not.)"""
    buf = b""
    while chunk := resp.read1(65536):
        buf += chunk
        *whole, buf = buf.split(b"\n")
        yield from (x for x in whole if x)
    if buf:
        yield buf


def one_chat(conn: http.client.HTTPConnection) -> tuple[float, float, int]:
    """(seconds to the first token, tokens/s after it, tokens) of one streamed chat on conn."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    t0 = time.perf_counter()
    conn.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = last = None
    n = 0
    for line in ndjson_lines(resp):
        if json.loads(line).get("done"):
            break
        last = time.perf_counter()
        first = first or last
        n += 1
    resp.read()
    if n < 2 or last <= first:
        raise RuntimeError(f"HTTP {resp.status}: {n} token lines, first at {first}, last at {last}")
    return first - t0, (n - 1) / (last - first), n


def ws_connect(port: int, tls: ssl.SSLContext | None):
    """A websocket to the backend through port: (socket, its reading file)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 f"Sec-WebSocket-Key: {key}\r\n\r\n".encode())
    f = sock.makefile("rb")
    status = f.readline()
    while f.readline() not in (b"\r\n", b""):
        pass
    if b" 101 " not in status:
        raise RuntimeError(f"websocket through port {port}: {status!r}")
    return sock, f


def one_ws_chat(ws) -> tuple[float, float, int]:
    """(seconds to the first token, tokens/s after it, tokens) of one chat over the websocket."""
    sock, f = ws
    t0 = time.perf_counter()
    sock.sendall(ws_frame(b"go", mask=True))
    first = last = None
    n = 0
    while (payload := ws_read(f)) not in (b"done", b""):
        last = time.perf_counter()
        first = first or last
        n += 1
    if n < 2 or last <= first:
        raise RuntimeError(f"websocket: {n} token frames")
    return first - t0, (n - 1) / (last - first), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="chats per mode (default 20)")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per chat (default 200)")
    ap.add_argument("--rate", type=float, default=200.0, help="the backend's tokens/s (default 200)")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx binary")
    ap.add_argument("--caddy", default=shutil.which("caddy") or "/usr/bin/caddy", help="caddy binary")
    args = ap.parse_args()
    Stream.tokens, Stream.rate = args.tokens, args.rate
    backend = ThreadingHTTPServer(("127.0.0.1", free_port()), Stream)
    backend.daemon_threads = True
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    d = Path(tempfile.mkdtemp(prefix="localaid-bench-proxy-"))
    make_certs(d)
    tls = ssl.create_default_context(cafile=str(d / "ca.crt"))
    modes: dict[str, tuple[int, ssl.SSLContext | None]] = {"direct": (backend.server_port, None)}
    procs: dict[str, subprocess.Popen] = {}
    notes = []
    try:
        for kind, binary in (("nginx", args.nginx), ("caddy", args.caddy)):
            if not os.access(binary, os.X_OK):
                notes.append(f"{kind}: {binary} missing, left out")
                continue
            port = free_port()
            procs[kind] = start_proxy(kind, binary, d, port, backend.server_port)
            modes[kind] = (port, tls)
        results = measure(modes, args.runs)
        mem = {k: memory_kib(p.pid) for k, p in procs.items()}
    finally:
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    report(results, mem, args, notes)
    return 0


def measure(modes: dict, runs: int) -> dict:
    conns = {m: connect(port, tls)[0] for m, (port, tls) in modes.items()}
    sockets = {m: ws_connect(port, tls) for m, (port, tls) in modes.items()}
    out = {m: {k: [] for k in ("ttft", "tps", "ws_ttft", "ws_tps", "handshake")} for m in modes}
    cut = {m: [] for m in modes}
    for i in range(runs + 1):  # the first round warms each path (upstream keep-alive, caches)
        for m, (port, tls) in modes.items():
            try:
                got = (("", one_chat(conns[m])), ("ws_", one_ws_chat(sockets[m])))
            except (OSError, ValueError, RuntimeError, http.client.HTTPException) as e:
                cut[m].append(f"{type(e).__name__}: {e}")  # counted, and the path opened afresh
                conns[m].close()
                conns[m], sockets[m] = connect(port, tls)[0], ws_connect(port, tls)
                continue
            c, hs = connect(port, tls)
            c.close()
            if i == 0:
                continue
            for prefix, (ttft, tps, _n) in got:
                out[m][prefix + "ttft"].append(ttft)
                out[m][prefix + "tps"].append(tps)
            out[m]["handshake"].append(hs)
    for m in modes:
        conns[m].close()
        sockets[m][1].close()
        sockets[m][0].close()
    return {"runs": out, "cut": cut}


def report(results: dict, mem: dict, args, notes: list[str]) -> None:
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results["runs"].items()}
    base = med["direct"]
    rows = []
    for m, r in med.items():
        for label, p in (("HTTP stream", ""), ("websocket", "ws_")):
            added = "" if m == "direct" else f"{1000 * (r[p + 'ttft'] - base[p + 'ttft']):+.2f} ms"
            lost = "" if m == "direct" else f"{100 * (1 - r[p + 'tps'] / base[p + 'tps']):+.2f} %"
            rows.append([m, label, f"{1000 * r[p + 'ttft']:.2f} ms", added, f"{r[p + 'tps']:.1f}", lost,
                         f"{1000 * r['handshake']:.2f} ms" if not p else "",
                         f"{mem[m][1] / 1024:.1f} / {mem[m][0] / 1024:.1f} MiB" if m in mem and not p else ""])
    print_table(f"\nA streamed chat of {args.tokens} tokens at {args.rate:g} tokens/s, on an open connection; "
                f"median of {args.runs} (goal: <= 2 ms added to the first token, <= 2 % fewer tokens/s)",
                ["path", "transport", "first token", "added", "tokens/s", "throughput lost", "new connection",
                 "proxy PSS / RSS"], rows)
    for m, why in results["cut"].items():
        if why:
            notes.append(f"{m}: {len(why)} of {args.runs + 1} rounds cut short and left out ({'; '.join(sorted(set(why)))})")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    sys.exit(main())
