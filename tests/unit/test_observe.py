"""Observer: what it asks systemd each cycle (real HTTP probes against loopback servers).

The systemd double answers like the D-Bus adapter and hands signals to the UnitWatch the way
the adapter's Subscription does; tests/unit/test_unit_watch.py runs the real adapter against a
stand-in systemd on a D-Bus socket."""

import http.server
import io
import socket
import threading
from dataclasses import replace

from localaid import log
from localaid.adapters.systemd import SystemdError
from localaid.config import Config
from localaid.observe import Observer, UnitWatch
from localaid.records import OLLAMA


class Subscription:
    def __init__(self, on_event):
        self.on_event = on_event
        self.queued = []
        self.errors = []
        self.alive = True

    def pump(self):
        n = len(self.queued)
        for event in self.queued:
            self.on_event(*event)
        self.queued.clear()
        return n

    def close(self):
        self.alive = False


class Systemd:
    """Answers like the D-Bus adapter; counts the summary reads and per-unit detail fetches."""

    def __init__(self):
        self.enter = 100_000_000  # µs, as systemd reports ActiveEnterTimestampMonotonic
        self.detail_calls = 0
        self.summary_calls = 0
        self.sub = None

    def summaries(self, names):
        self.summary_calls += 1
        return {n: ("loaded", "active", "running", False) for n in names}

    def subscribe(self, names, on_event):
        self.sub = Subscription(on_event)
        return self.sub

    def on_change(self, fn):
        self.changed = fn

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


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open, as Ollama does

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass


def _healthy(sd, now):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    c = Config()
    c = replace(c, ollama=replace(c.ollama, port=srv.server_address[1]), webui=replace(c.webui, enabled=False))
    return srv, c, Observer(sd, clock=lambda: now[0])


def test_healthy_cycles_ask_systemd_nothing_until_it_signals_a_change():
    """Answering probes: the first cycle reads every unit, the next ones none (no D-Bus call) until
    systemd signals a change of a unit or RESYNC_EVERY passed."""
    now = [1000.0]
    sd = Systemd()
    srv, c, obs = _healthy(sd, now)
    try:
        for _ in range(5):
            assert obs.observe(c).services[OLLAMA].probe.ok
            now[0] += 1.0
        assert (sd.summary_calls, sd.detail_calls) == (1, 1)
        sd.sub.queued.append(("changed", "ollama.service"))
        sd.enter = 200_000_000
        assert obs.observe(c).services[OLLAMA].unit.active_enter_mono == 200.0
        assert (sd.summary_calls, sd.detail_calls) == (2, 2)
        sd.sub.queued.append(("changed", "localaid-devices.service"))
        obs.observe(c)
        assert (sd.summary_calls, sd.detail_calls) == (3, 2)  # a job unit: its summary only
        now[0] += UnitWatch.RESYNC_EVERY
        obs.observe(c)
        assert (sd.summary_calls, sd.detail_calls) == (4, 3)
    finally:
        srv.shutdown()
        obs.close()


def test_a_unit_changed_through_the_adapter_is_read_at_the_next_cycle():
    """After a start or restart, the next cycle must see the queued job (the policy would otherwise
    take a set-up job just started for one that already ended), signal or not."""
    now = [1000.0]
    sd = Systemd()
    srv, c, obs = _healthy(sd, now)
    try:
        obs.observe(c)
        sd.changed("localaid-ollama-setup.service")
        obs.observe(c)
        assert sd.summary_calls == 2
        sd.changed(None)  # daemon-reload, enable: everything
        obs.observe(c)
        assert (sd.summary_calls, sd.detail_calls) == (3, 2)
    finally:
        srv.shutdown()
        obs.close()


def test_reload_signal_and_closed_connection_read_every_unit():
    now = [1000.0]
    sd = Systemd()
    srv, c, obs = _healthy(sd, now)
    try:
        obs.observe(c)
        sd.sub.queued.append(("reload", None))
        obs.observe(c)
        assert (sd.summary_calls, sd.detail_calls) == (2, 2)
        first = sd.sub
        first.alive = False  # systemd re-executed: the private connection closed
        obs.observe(c)
        assert sd.sub is not first and (sd.summary_calls, sd.detail_calls) == (3, 3)
    finally:
        srv.shutdown()
        obs.close()


def test_without_signals_every_cycle_polls_and_says_so_once(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    now = [1000.0]
    sd = Systemd()

    def refuse(names, on_event):
        raise SystemdError("Subscribe: Access denied")
    sd.subscribe = refuse
    srv, c, obs = _healthy(sd, now)
    try:
        for _ in range(3):
            obs.observe(c)
            now[0] += 1.0
        assert sd.summary_calls == 3 and sd.detail_calls == 1  # details only when the summary changes
        assert out.getvalue().count("cannot follow systemd's unit signals") == 1
        assert not obs.units.events
    finally:
        srv.shutdown()
        obs.close()


def test_probes_keep_their_connections():
    now = [1000.0]
    sd = Systemd()
    srv, c, obs = _healthy(sd, now)
    try:
        for _ in range(4):
            assert obs.observe(c).services[OLLAMA].probe.ok
        assert {k: cl.connects for k, cl in obs._clients.items()} == {"ollama": 1, "ps": 1}
    finally:
        srv.shutdown()
        obs.close()


def test_a_stale_or_reused_maintenance_marker_never_freezes_supervision(tmp_path, monkeypatch):
    import os

    from localaid import observe, paths, progress
    monkeypatch.setattr(paths, "MAINTENANCE_DIR", str(tmp_path))
    progress.write_owner(str(tmp_path / "open-webui"))               # a live job: this process
    (tmp_path / "ollama").write_text(f"{os.getpid()} 1\n")           # our PID, another start: reused
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    (tmp_path / "gone").write_text(f"{child} 0\n")                    # a killed job
    (tmp_path / ".tmp").write_text(f"{os.getpid()}\n")                # an atomic write's temp file
    assert observe.maintenance() == frozenset({"open-webui"})


def test_cgroup_cpu_time_from_v2_hybrid_or_v1(tmp_path):
    from localaid import procfs
    cg = "/system.slice/open-webui.service"
    v2 = tmp_path / "v2"
    (v2 / cg[1:]).mkdir(parents=True)
    (v2 / cg[1:] / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    assert procfs.cgroup_cpu_seconds(cg, str(v2)) == 2.5
    hybrid = tmp_path / "hybrid"
    (hybrid / "unified" / cg[1:]).mkdir(parents=True)
    (hybrid / "unified" / cg[1:] / "cpu.stat").write_text("usage_usec 1000000\n")
    assert procfs.cgroup_cpu_seconds(cg, str(hybrid)) == 1.0
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / cg[1:]).mkdir(parents=True)
    (v1 / "cpu,cpuacct" / cg[1:] / "cpuacct.usage").write_text("3000000000\n")
    assert procfs.cgroup_cpu_seconds(cg, str(v1)) == 3.0
    assert procfs.cgroup_cpu_seconds("/missing.service", str(v2)) is None
    assert procfs.cgroup_cpu_seconds("/../../etc", str(v2)) is None
    assert procfs.cgroup_cpu_seconds("relative", str(v2)) is None


def test_status_is_written_again_after_a_reload(tmp_path):
    """A reload sets STATUS to "reloading configuration": the next cycle must write its own line
    even when it is the same as before the reload (else systemctl status keeps saying reloading)."""
    from localaid.supervisor import Supervisor

    class Notes:
        def __init__(self):
            self.sent = []

        def send(self, **fields):
            self.sent.append(fields)
    (tmp_path / "localaid.yaml").write_text("{}\n")
    sup = Supervisor.__new__(Supervisor)
    sup.config_path, sup.conf_d, sup.notifier, sup.generation = str(tmp_path / "localaid.yaml"), None, Notes(), 1
    sup._last_status = "ollama ok · open-webui ok :3000"
    sup.reload()
    assert sup.notifier.sent[0]["status"] == "reloading configuration" and sup.notifier.sent[-1] == {"ready": 1}
    assert sup._last_status is None and sup.generation == 2
