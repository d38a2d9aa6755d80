"""Observer: what it asks systemd each cycle (real HTTP probes against a closed loopback port)."""

import http.server
import socket
import threading
from dataclasses import replace

from localaid.config import Config
from localaid.records import OLLAMA
from localaid.observe import Observer


class Systemd:
    """Answers like the D-Bus adapter; counts the per-unit detail fetches."""

    def __init__(self):
        self.enter = 100_000_000  # µs, as systemd reports ActiveEnterTimestampMonotonic
        self.detail_calls = 0

    def summaries(self, names):
        return {n: ("loaded", "active", "running", False) for n in names}

    def details(self, name):
        self.detail_calls += 1
        return {"ActiveEnterTimestampMonotonic": self.enter, "MainPID": 42, "NRestarts": 0,
                "Result": "success", "ControlGroup": ""}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_failed_probe_refetches_stale_unit_details_in_the_same_cycle():
    """A quick restart leaves the summary "active running": the failed probe brings the new start
    time at once, so the policy grants the start-up grace instead of counting a failure."""
    now = [1000.0]
    sd = Systemd()
    c = Config()
    c = replace(c, ollama=replace(c.ollama, port=closed_port()), webui=replace(c.webui, enabled=False))
    obs = Observer(sd, clock=lambda: now[0])
    try:
        first = obs.observe(c).services[OLLAMA]
        assert not first.probe.ok and first.unit.active_enter_mono == 100.0
        calls = sd.detail_calls
        now[0] += 1.0
        sd.enter = 200_000_000  # restarted in between; the summary did not change
        second = obs.observe(c).services[OLLAMA]
        assert second.unit.active_enter_mono == 200.0
        assert sd.detail_calls == calls + 1  # once, not once per source
        now[0] += 1.0
        obs.observe(c)
        assert sd.detail_calls == calls + 2  # still failing: fresh details each cycle
    finally:
        obs.close()


def test_healthy_cycles_fetch_details_only_when_stale():
    """Answering probes: one summary call a cycle, the details again only after DETAIL_MAX_AGE."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    now = [1000.0]
    sd = Systemd()
    c = Config()
    c = replace(c, ollama=replace(c.ollama, port=srv.server_address[1]), webui=replace(c.webui, enabled=False))
    obs = Observer(sd, clock=lambda: now[0])
    try:
        for _ in range(5):
            assert obs.observe(c).services[OLLAMA].probe.ok
            now[0] += 1.0
        assert sd.detail_calls == 1
        now[0] += Observer.DETAIL_MAX_AGE
        obs.observe(c)
        assert sd.detail_calls == 2
    finally:
        srv.shutdown()
        obs.close()
