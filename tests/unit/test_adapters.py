"""Adapters against real sockets and a real HTTP server on loopback (no mocks)."""

import http.server
import io
import json
import os
import socket
import stat
import threading
import time

import pytest

from localaid import fsutil, log, progress
from localaid.adapters import http as http_adapter
from localaid.adapters.notify import Notifier, watchdog_interval


# ----------------------------------------------------------------------------- sd_notify
def test_notify_sends_datagrams_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    n = Notifier(path)
    assert n.enabled
    assert n.ready("starting")
    assert n.watchdog()
    first = server.recv(4096).decode()
    assert "READY=1" in first.splitlines() and "STATUS=starting" in first.splitlines()
    assert f"MAINPID={os.getpid()}" in first
    assert server.recv(4096) == b"WATCHDOG=1"


def test_notify_abstract_namespace():
    name = f"localaid-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    assert Notifier("@" + name).status("ollama ok")
    assert server.recv(4096) == b"STATUS=ollama ok"


def test_notify_failure_is_reported_once_not_swallowed(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.watchdog() is False
    assert n.watchdog() is False
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("<3>sd_notify failed")


def test_notify_disabled_without_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled and Notifier().watchdog() is False


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


# ---------------------------------------------------------------------------------- log
def test_log_lines_have_priority_prefix_and_quoted_fields(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    log.notice("kill-restart ollama.service: ok", cause="hung", evidence="3 probes failed", none=None)
    log.error("multi\nline")
    assert out.getvalue().splitlines() == [
        '<5>kill-restart ollama.service: ok cause=hung evidence="3 probes failed"',
        "<3>multi line",
    ]


# ------------------------------------------------------------------------------- fsutil
def test_atomic_write_sets_mode_and_leaves_no_temp(tmp_path):
    p = tmp_path / "secret"
    fsutil.atomic_write(str(p), "x", 0o600)
    assert p.read_text() == "x"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    fsutil.atomic_write(str(p), "y", 0o600)
    assert p.read_text() == "y"
    assert os.listdir(tmp_path) == ["secret"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    p = tmp_path / "state.json"
    fsutil.write_json(str(p), {"a": 1})
    with pytest.raises(TypeError):
        fsutil.atomic_write(str(p), 12345)  # not text or bytes
    assert json.loads(p.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_read_json_tolerates_missing_and_partial(tmp_path):
    assert fsutil.read_json(str(tmp_path / "none")) is None
    (tmp_path / "half").write_text('{"a": ')
    assert fsutil.read_json(str(tmp_path / "half")) is None


def test_progress_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setattr(progress.paths, "PROGRESS_DIR", str(tmp_path))
    progress.report("ollama-setup", "running", "downloading install script", 0.25, ["line 1", "line 2"])
    got = progress.read_all()["ollama-setup"]
    assert (got.state, got.text, got.fraction, got.detail) == ("running", "downloading install script", 0.25,
                                                               ("line 1", "line 2"))
    assert got.pid == os.getpid()


# ------------------------------------------------------------------------------- http
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.6)
        if self.path == "/500":
            self.send_response(500)
            self.end_headers()
            return
        body = json.dumps({"models": [{"name": "llama3:latest", "size": 10, "size_vram": 4},
                                      {"bogus": 1}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_probe_ok_and_parse_ps(server):
    probe, body = http_adapter.request(server + "/api/ps", 1.0)
    assert probe.ok and probe.status == 200 and probe.latency < 1.0
    models = http_adapter.parse_ps(body)
    assert len(models) == 1 and models[0].name == "llama3:latest" and not models[0].on_gpu


def test_probe_http_error(server):
    probe, _ = http_adapter.request(server + "/500", 1.0)
    assert (probe.ok, probe.status, probe.error) == (False, 500, "HTTP 500")


def test_probe_timeout_is_bounded(server):
    t = time.monotonic()
    probe, _ = http_adapter.request(server + "/slow", 0.2)
    assert not probe.ok and probe.error == "timeout after 0.2 s"
    assert time.monotonic() - t < 0.5


def test_probe_hung_server_that_accepts_but_never_answers():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)  # the kernel accepts; nobody reads: exactly a SIGSTOPped server
    try:
        t = time.monotonic()
        probe, _ = http_adapter.request(f"http://127.0.0.1:{s.getsockname()[1]}/", 0.3)
        assert not probe.ok and "timeout" in probe.error
        assert time.monotonic() - t < 0.6
    finally:
        s.close()


def test_probe_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    probe, _ = http_adapter.request(f"http://127.0.0.1:{port}/", 0.5)
    assert (probe.ok, probe.error) == (False, "connection refused")


def test_parse_ps_tolerates_garbage():
    assert http_adapter.parse_ps(None) == ()
    assert http_adapter.parse_ps({"models": None}) == ()
    assert http_adapter.parse_ps([1, 2]) == ()


# ------------------------------------------------------------------------ http keep-alive
class _KeepAlive(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = []  # one entry per connection the server accepted
    stall = threading.Event()  # set: answer nothing (a hung server with the connection open)

    def setup(self):
        super().setup()
        _KeepAlive.connections.append(self.client_address)

    def do_GET(self):
        if _KeepAlive.stall.is_set():
            time.sleep(1.0)
            return
        body = b'{"models": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def keepalive_server():
    _KeepAlive.connections = []
    _KeepAlive.stall.clear()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_client_keeps_one_connection(keepalive_server):
    c = http_adapter.Client(keepalive_server + "/api/ps")
    try:
        for _ in range(5):
            probe, body = c.request(1.0)
            assert probe.ok and body == {"models": []}
        assert len(_KeepAlive.connections) == 1 and c.connects == 1
    finally:
        c.close()


def test_client_does_not_wait_for_a_delayed_ack(keepalive_server):
    """http.server writes the headers and the body apart with Nagle's algorithm on: without an
    immediate ACK every kept-alive exchange took ~40 ms (the kernel's delayed ACK)."""
    c = http_adapter.Client(keepalive_server + "/api/ps")
    try:
        latencies = sorted(c.request(1.0)[0].latency for _ in range(7))
        assert latencies[3] < 0.02, latencies
    finally:
        c.close()


def _one_answer_then_close():
    """A server that answers each connection once, keep-alive headers and all, then closes it:
    what a server's idle timeout does to a kept connection between two probes."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
            time.sleep(0.05)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return s, accepted


def test_client_reconnects_when_the_server_closed_the_kept_connection():
    s, accepted = _one_answer_then_close()
    c = http_adapter.Client(f"http://127.0.0.1:{s.getsockname()[1]}/")
    try:
        assert c.request(1.0)[0].ok
        time.sleep(0.2)  # closed by the server while idle: seen before the request
        assert c.request(1.0)[0].ok
        assert c.connects == 2
    finally:
        c.close()
        s.close()


def test_client_retries_once_when_the_close_is_only_seen_by_the_request(monkeypatch):
    s, accepted = _one_answer_then_close()
    c = http_adapter.Client(f"http://127.0.0.1:{s.getsockname()[1]}/")
    try:
        assert c.request(1.0)[0].ok
        time.sleep(0.2)
        monkeypatch.setattr(http_adapter, "_still_open", lambda conn: True)  # a close racing the request
        probe, _ = c.request(1.0)
        assert probe.ok and c.connects == 2
    finally:
        c.close()
        s.close()


def test_client_timeout_is_bounded_and_drops_the_connection(keepalive_server):
    c = http_adapter.Client(keepalive_server + "/")
    try:
        assert c.request(1.0)[0].ok
        _KeepAlive.stall.set()  # hung, on the kept connection
        t = time.monotonic()
        probe, _ = c.request(0.2)
        assert not probe.ok and probe.error == "timeout after 0.2 s"
        assert time.monotonic() - t < 0.5
        t = time.monotonic()
        probe, _ = c.request(0.2)  # a new connection, and a timeout again: no retry past the deadline
        assert probe.error == "timeout after 0.2 s" and time.monotonic() - t < 0.5
        assert c.connects == 2
        _KeepAlive.stall.clear()
        time.sleep(1.0)
        assert c.request(1.0)[0].ok and c.connects == 3
    finally:
        c.close()


def test_client_hung_server_that_accepts_but_never_answers():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    c = http_adapter.Client(f"http://127.0.0.1:{s.getsockname()[1]}/")
    try:
        for _ in range(2):
            t = time.monotonic()
            probe, _ = c.request(0.3)
            assert not probe.ok and "timeout" in probe.error
            assert time.monotonic() - t < 0.6
    finally:
        c.close()
        s.close()


def test_client_refused_and_http_error(server):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert http_adapter.Client(f"http://127.0.0.1:{port}/").request(0.5)[0].error == "connection refused"
    probe, _ = http_adapter.Client(server + "/500").request(1.0)
    assert (probe.ok, probe.status, probe.error) == (False, 500, "HTTP 500")
