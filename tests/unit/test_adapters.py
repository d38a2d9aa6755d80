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
