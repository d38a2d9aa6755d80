"""Fault injection under real systemd: hangs, crashes, crash loops, a taken port, admin stops.

The supervised services here are stand-ins (python's http.server answering the probe paths):
what is under test is localaid's detection and repair, which only sees units and HTTP answers.
"""

import json
import time

import pytest

from harness import wait_for

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
    count: 3
    window: 2m
"""


def standin(port: int, docroot: str, extra: str = "") -> str:
    return f"""\
[Unit]
Description=stand-in service on {port}
[Service]
ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 {port} --directory {docroot}
Restart=always
RestartSec=1
{extra}"""


def start_standins(c):
    c.sh("mkdir -p /srv/webui /srv/ollama && echo ok > /srv/webui/health && echo ok > /srv/webui/ready")
    c.write("/etc/systemd/system/ollama.service", standin(11434, "/srv/ollama"))
    c.write("/etc/systemd/system/open-webui.service", standin(3000, "/srv/webui"))
    c.systemctl("daemon-reload")
    c.systemctl("start", "ollama.service", "open-webui.service")


@pytest.fixture(scope="module")
def container_options():
    return {"config": CONFIG, "setup": start_standins, "private_network": True}


def doc(c):
    return json.loads(c.read("/run/localaid/status.json"))


def state(c, name):
    return {s["name"]: s for s in doc(c)["services"]}[name]


def healthy(c):
    return wait_for(lambda: doc(c)["healthy"], timeout=30, interval=0.2)


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
    assert 'evidence="3 probes failed in a row, last: timeout after 1 s"' in log
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
    time.sleep(6)  # several cycles
    assert c.is_active("open-webui.service") == "inactive"
    assert state(c, "open-webui")["state"] == "stopped"
    assert "open-webui stopped (stopped by admin" in c.unit_property("localaid", "StatusText")
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


def test_port_taken_crash_loop_is_reported_degraded(container):
    c = container
    healthy(c)
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
