"""Fault injection under real systemd: hangs, crashes, crash loops, HTTP 500s, slow answers, load,
a taken port, admin stops.

Ollama is the fake from tests/fakes/ollama (its fault switches in /run/fake-ollama/faults.json);
Open WebUI is a stand-in (python's http.server answering /health and /ready): what is under test
is localaid's detection and repair, which only sees units and HTTP answers.
"""

import json
import time

from pathlib import Path

import pytest

from harness import standin_unit, wait_for

FAKES = Path(__file__).resolve().parents[1] / "fakes"

CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
gpu:
  devices:
    mode: "off"
health:
  start_grace:
    ollama: 2s
    webui: 2s
  backoff:
    initial: 2s
    max: 20s
  restart_limit:
    count: 10
    window: 2m
"""


OLLAMA_UNIT = """\
[Unit]
Description=fake Ollama (tests/fakes/ollama), with install.sh's restart settings
[Service]
ExecStart=/usr/bin/python3 /opt/fakes/ollama/ollama serve
Environment=OLLAMA_MODELS=/var/lib/fake-ollama/models
Restart=always
RestartSec=3
"""


def start_standins(c):
    c.sh("mkdir -p /srv/webui /run/fake-ollama && echo ok > /srv/webui/health && echo ok > /srv/webui/ready")
    c.write("/etc/systemd/system/ollama.service", OLLAMA_UNIT)
    c.write("/etc/systemd/system/open-webui.service", standin_unit(3000, "/srv/webui", extra="RestartSec=1\n"))
    c.systemctl("daemon-reload")
    c.systemctl("start", "ollama.service", "open-webui.service")


@pytest.fixture(scope="module")
def container_options():
    return {"config": CONFIG, "setup": start_standins, "private_network": True,
            "binds": [(str(FAKES / "ollama"), "/opt/fakes/ollama", True)]}


def doc(c):
    return json.loads(c.read("/run/localaid/status.json"))


def state(c, name):
    return {s["name"]: s for s in doc(c)["services"]}[name]


def healthy(c):
    return wait_for(lambda: doc(c)["healthy"], timeout=30, interval=0.2)


def service_ok(c, name):
    return wait_for(lambda: state(c, name)["state"] == "ok", timeout=40, interval=0.2)


def ollama_ok(c):
    return service_ok(c, "ollama")


def journal_since(c, cursor_time):
    return c.run(["journalctl", "-u", "localaid", "--no-pager", "-o", "cat",
                  "--since", f"@{cursor_time:.3f}"]).stdout


def test_starts_healthy(container):
    healthy(container)
    line = container.unit_property("localaid", "StatusText")
    assert line.startswith("ollama ok") and "open-webui ok :3000" in line


@pytest.mark.parametrize("unit,name", [("ollama.service", "ollama"), ("open-webui.service", "open-webui")])
def test_hang_detected_and_repaired(container, unit, name):
    c = container
    healthy(c)
    pid = c.unit_property(unit, "MainPID")
    t0 = time.time()
    c.systemctl("kill", "--kill-who=main", "-s", "SIGSTOP", unit)
    wait_for(lambda: c.unit_property(unit, "MainPID") not in ("0", pid), timeout=15, interval=0.1)
    wait_for(lambda: state(c, name)["state"] == "ok", timeout=15, interval=0.2)
    took = time.time() - t0
    assert took < 8.0, took
    log = journal_since(c, t0)
    assert f"kill-restart {unit}: ok cause=hung" in log
    assert 'evidence="3 probes failed in a row, last: timeout after 0.5 s"' in log
    assert f"{name}: healthy again after" in log


def test_crash_is_left_to_systemd_and_counted(container):
    c = container
    healthy(c)
    t0 = time.time()
    before = int(c.unit_property("ollama.service", "NRestarts"))
    c.systemctl("kill", "--kill-who=main", "-s", "SIGKILL", "ollama.service")
    wait_for(lambda: int(c.unit_property("ollama.service", "NRestarts")) > before, timeout=10)
    wait_for(lambda: state(c, "ollama")["state"] == "ok", timeout=15)
    log = journal_since(c, t0)
    assert "ollama: exited and was restarted by systemd" in log
    assert "kill-restart ollama.service" not in log


def test_admin_stop_is_respected_until_started_again(container):
    c = container
    healthy(c)
    c.systemctl("stop", "open-webui.service")
    try:
        time.sleep(6)  # several cycles
        assert c.is_active("open-webui.service") == "inactive"
        assert state(c, "open-webui")["state"] == "stopped"
        assert "open-webui stopped (stopped by admin" in c.unit_property("localaid", "StatusText")
    finally:
        c.systemctl("start", "open-webui.service")
    wait_for(lambda: state(c, "open-webui")["state"] == "ok", timeout=15)


def test_localaid_kill9_keeps_restart_budget(container):
    c = container
    healthy(c)
    restarts_before = state(c, "ollama")["restarts"]
    c.systemctl("kill", "--kill-who=main", "-s", "SIGKILL", "localaid")
    wait_for(lambda: c.is_active("localaid") == "active", timeout=20)
    wait_for(lambda: doc(c)["pid"] == int(c.unit_property("localaid", "MainPID")), timeout=20)
    assert state(c, "ollama")["restarts"] == restarts_before


def set_faults(c, **faults):
    c.write("/run/fake-ollama/faults.json", json.dumps(faults))


def actions_since(c, t0):
    return [ln for ln in journal_since(c, t0).splitlines() if "kill-restart" in ln or ln.startswith("start ")]


def test_http_500_detected_and_repaired(container):
    c = container
    ollama_ok(c)
    t0 = time.time()
    set_faults(c, http500=True)
    try:
        wait_for(lambda: "kill-restart ollama.service: ok cause=unhealthy" in journal_since(c, t0), timeout=15)
    finally:
        set_faults(c)  # the restart "fixed" it
    wait_for(lambda: state(c, "ollama")["state"] == "ok", timeout=20)
    assert 'last: HTTP 500"' in journal_since(c, t0)


def test_slow_answers_within_the_timeout_are_never_restarted(container):
    c = container
    ollama_ok(c)
    t0 = time.time()
    set_faults(c, slow=0.35)  # timeout is 0.5 s
    try:
        time.sleep(15)
        assert state(c, "ollama")["state"] == "ok"
    finally:
        set_faults(c)
    assert actions_since(c, t0) == []


def test_very_slow_answers_count_as_hung(container):
    c = container
    ollama_ok(c)
    t0 = time.time()
    set_faults(c, slow=5)
    try:
        wait_for(lambda: "kill-restart ollama.service: ok cause=hung" in journal_since(c, t0), timeout=20)
    finally:
        set_faults(c)
    wait_for(lambda: state(c, "ollama")["state"] == "ok", timeout=20)


def test_busy_loading_models_under_load_is_never_restarted(container):
    """Concurrent clients keep the fake busy loading models (2 s each) for 40 s: no restart."""
    c = container
    ollama_ok(c)
    t0 = time.time()
    set_faults(c, slow_load=2)
    load = r"""
import json, threading, time, urllib.request
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:11434" + path, method="POST", data=json.dumps(body).encode())
    return json.load(urllib.request.urlopen(req, timeout=10))
post("/api/pull", {"model": "tiny:latest", "stream": False})
stop = time.time() + 40
loads = [0]
def client():
    while time.time() < stop:
        # a prompt with keep_alive 0: the model is loaded (2 s), answers, and is unloaded again
        if post("/api/generate", {"model": "tiny:latest", "prompt": "hi", "stream": False,
                                  "keep_alive": 0}).get("done"):
            loads[0] += 1
threads = [threading.Thread(target=client) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(loads[0])
"""
    try:
        n = int(c.run(["python3", "-c", load], timeout=120).stdout.strip())
    finally:
        set_faults(c)
    assert n >= 16 * 10  # every client got ~20 answers, each after a 2 s load
    assert actions_since(c, t0) == []
    assert state(c, "ollama")["state"] == "ok"


def test_crash_loop_budget_holds_and_status_says_degraded(container):
    c = container
    ollama_ok(c)
    c.write("/etc/localaid/conf.d/50-budget.yaml", "health:\n  restart_limit:\n    count: 3\n    window: 2m\n")
    c.systemctl("reload", "localaid")
    t0 = time.time()
    set_faults(c, crash=True)
    try:
        # Each crash is restarted by systemd 3 s later; two of them in the window make it a loop.
        st = wait_for(lambda: (s := state(c, "ollama"))["state"] == "degraded" and "crash loop" in s["reason"]
                      and s, timeout=40, interval=0.5)
        line = c.unit_property("localaid", "StatusText")
        assert "ollama degraded (" in line and "crash loop" in line, line
        # localaid adds no restarts of its own to a crash loop: systemd's Restart= is doing them.
        assert actions_since(c, t0) == []
    finally:
        set_faults(c)
    # Back up, but the window still holds the crashes: answering, and reported as such.
    st = wait_for(lambda: (s := state(c, "ollama"))["reason"].startswith("answering, but") and s, timeout=30)
    assert st["state"] == "degraded"
    c.run(["rm", "/etc/localaid/conf.d/50-budget.yaml"])
    c.systemctl("reload", "localaid")
    ollama_ok(c)


def test_port_taken_crash_loop_is_reported_degraded(container):
    c = container
    service_ok(c, "open-webui")
    c.systemctl("stop", "open-webui.service")
    # Something else grabs port 3000; open-webui can no longer bind and dies on every start.
    c.run(["systemd-run", "--unit=squatter", "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
           "3000", "--directory", "/usr/share/doc"])
    time.sleep(1)
    try:
        c.systemctl("start", "open-webui.service", check=False)
        st = wait_for(lambda: (s := state(c, "open-webui"))["state"] == "degraded" and s, timeout=60, interval=0.5)
        assert "crash loop" in st["reason"] or "restart budget" in st["reason"], st
        assert "open-webui degraded" in c.unit_property("localaid", "StatusText")
        assert not doc(c)["healthy"]
    finally:
        c.systemctl("stop", "squatter.service", check=False)
        c.systemctl("reset-failed", "open-webui.service", check=False)
        c.systemctl("restart", "open-webui.service", check=False)
    wait_for(lambda: state(c, "open-webui")["state"] in ("ok", "degraded"), timeout=30)
