"""HTTP probes for the supervisor's loop: one request, a hard timeout, a Probe back.

The loop uses the standard library's http.client rather than httpx: a probe is one small
request a second, and http.client does it for a tenth of the CPU and none of httpx's ~20 MB of
imports (see bench/idle_footprint.py). httpx serves the long, streaming work (model pulls).

request() opens a connection for one exchange. Client keeps one HTTP/1.1 connection open to
a probed URL's server between cycles (Ollama keeps it; Open WebUI's server for 5 s, more than
an interval): no connect and no accept a second. A kept connection the server closed meanwhile
is noticed before the request, or by the request itself, and the request goes once more on a
new connection, inside the same deadline. After any error or timeout the connection is thrown
away, so a hung server is met with a fresh connection each time, exactly as without keep-alive.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import ssl
import threading
import time
from datetime import datetime
from urllib.parse import urlsplit

from localaid.records import LoadedModel, Probe

# A kept connection the server had closed: worth one more try on a new one.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def tls_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """For https:// probes: trust only `ca_file` (localaid's own CA), or the system's CAs
    (None); verify=False checks nothing (a certificate of the administrator's that may not
    name the loopback address probed)."""
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file)


def _connection(parts, timeout: float, tls: ssl.SSLContext | None) -> http.client.HTTPConnection:
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout,
                                           context=tls or ssl.create_default_context())
    return http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)


def request(url: str, timeout: float, method: str = "GET", body: object | None = None,
            host_header: str | None = None, tls: ssl.SSLContext | None = None,
            headers: dict[str, str] | None = None) -> tuple[Probe, object | None]:
    """Returns (probe, parsed JSON body or None). Never raises. `tls`: for an https:// URL
    (default: the system's CAs); `headers`: sent with the request (a node's Authorization)."""
    parts = urlsplit(url)
    start = time.monotonic()
    conn = _connection(parts, timeout, tls)
    try:
        probe, parsed, _ = _exchange(conn, method, parts, body, host_header, start, timeout, close=True,
                                     extra=headers)
        return probe, parsed
    except Exception as e:
        return _failure(e, start, timeout), None
    finally:
        conn.close()


class Client:
    """One kept-alive HTTP/1.1 connection to `url`'s server, for a probe repeated every cycle.
    request() never raises and is thread-safe (one exchange at a time)."""

    def __init__(self, url: str, host_header: str | None = None, tls: ssl.SSLContext | None = None,
                 headers: dict[str, str] | None = None):
        self.url = url
        self.host_header = host_header
        self.tls = tls
        self.headers = headers  # sent with each request; never logged
        self._parts = urlsplit(url)
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.connects = 0  # connections opened: for tests and benches

    def request(self, timeout: float, method: str = "GET", body: object | None = None) -> tuple[Probe, object | None]:
        start = time.monotonic()
        with self._lock:
            reused = self._conn is not None and _still_open(self._conn)
            if not reused:
                self._discard()
            while True:
                if self._conn is None:
                    self._conn = _connection(self._parts, timeout, self.tls)
                    self.connects += 1
                try:
                    probe, parsed, keep = _exchange(self._conn, method, self._parts, body, self.host_header,
                                                    start, timeout, close=False, extra=self.headers)
                except _STALE as e:
                    self._discard()
                    if reused and timeout - (time.monotonic() - start) > 0.05:
                        reused = False  # the server closed the kept connection: once more, on a new one
                        continue
                    return _failure(e, start, timeout), None
                except Exception as e:
                    self._discard()  # after a timeout or an error the connection is never used again
                    return _failure(e, start, timeout), None
                if not keep:
                    self._discard()
                return probe, parsed

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._discard()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """False when the server closed an idle kept connection (or sent something unasked)."""
    if conn.sock is None:
        return False
    try:
        p = select.poll()
        p.register(conn.sock, select.POLLIN | select.POLLPRI)
        return not p.poll(0)
    except (OSError, ValueError):
        return False


def _exchange(conn, method: str, parts, body, host_header, start: float, timeout: float,
              close: bool, extra: dict[str, str] | None = None) -> tuple[Probe, object | None, bool]:
    """One request and its answer on `conn`, all of it within `timeout` from `start`.
    Returns (probe, parsed JSON or None, whether the connection may carry another request)."""
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"Host": host_header or parts.netloc, **(extra or {})}
    if close:
        headers["Connection"] = "close"
    if payload is not None:
        headers["Content-Type"] = "application/json"
    if conn.sock is None:
        conn.timeout = max(0.05, timeout - (time.monotonic() - start))
        conn.connect()
    # The deadline covers the whole exchange, not each socket operation.
    conn.sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))
    conn.request(method, parts.path or "/", body=payload, headers=headers)
    conn.sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))
    if not close:
        _ack_at_once(conn.sock)
    resp = conn.getresponse()
    data = resp.read(1 << 20)
    latency = time.monotonic() - start
    keep = resp.isclosed() and not resp.will_close  # the whole body read, the server keeps it open
    parsed = None
    if data and "json" in (resp.getheader("Content-Type") or ""):
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
    ok = 200 <= resp.status < 300
    return Probe(ok, latency, resp.status, None if ok else f"HTTP {resp.status}"), parsed, keep


def _ack_at_once(sock) -> None:
    """Acknowledge the answer's first segment at once: a server that writes its headers and its
    body apart, with Nagle's algorithm on, would otherwise wait for our delayed ACK (up to 40 ms
    on Linux) before sending the body, on every kept-alive exchange."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except (AttributeError, OSError):
        pass


def _failure(e: BaseException, start: float, timeout: float) -> Probe:
    latency = time.monotonic() - start
    if isinstance(e, (socket.timeout, TimeoutError)):
        return Probe(False, latency, None, f"timeout after {timeout:g} s")
    if isinstance(e, ConnectionRefusedError):
        return Probe(False, latency, None, "connection refused")
    if isinstance(e, ssl.SSLCertVerificationError):
        return Probe(False, latency, None, f"certificate not trusted: {e.verify_message or e}"[:120])
    if isinstance(e, (OSError, http.client.HTTPException)):
        return Probe(False, latency, None, (str(e) or type(e).__name__)[:120])
    return Probe(False, latency, None, f"{type(e).__name__}: {e}"[:120])


def parse_ps(payload: object) -> tuple[LoadedModel, ...]:
    """Ollama's GET /api/ps body → loaded models (unknown shapes give an empty tuple)."""
    models = payload.get("models") if isinstance(payload, dict) else None
    out = []
    for m in models or ():
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            out.append(LoadedModel(m["name"], int(m.get("size") or 0), int(m.get("size_vram") or 0),
                                   parse_time(m.get("expires_at"))))
    return tuple(out)


def parse_time(text: object) -> float | None:
    """An RFC 3339 time as Go writes it (nanoseconds, "Z" or an offset) → epoch seconds."""
    if not isinstance(text, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
