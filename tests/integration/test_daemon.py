"""The daemon under real systemd: READY/STATUS, watchdog, reload, bad config, stop semantics."""

import json
import time

import pytest

from harness import standin_unit, wait_for

CONFIG = """\
# core daemon tests: no Open WebUI, no GPU device job, an install script that is not there
ollama:
  install_script: /nonexistent/install.sh
webui:
  enabled: false
gpu:
  devices:
    mode: "off"
"""

# A stand-in for a supervised service: the daemon must neither stop it nor care what it is.
STANDIN_UNIT = standin_unit(11434, description="stand-in ollama", extra="RestartSec=3\n")


@pytest.fixture(scope="module")
def container_options():
    def setup(c):
        c.write("/etc/systemd/system/ollama.service", STANDIN_UNIT)
        c.systemctl("daemon-reload")
        c.systemctl("start", "ollama.service")
    return {"config": CONFIG, "setup": setup, "private_network": True}


def _seconds(text: str) -> float:
    """systemctl show prints time spans as "10s", "1min 30s", "500ms"."""
    total = 0.0
    for part in text.split():
        for unit, factor in (("ms", 1e-3), ("us", 1e-6), ("min", 60), ("h", 3600), ("s", 1)):
            if part.endswith(unit):
                total += float(part[: -len(unit)]) * factor
                break
    return total


def status_doc(c):
    return json.loads(c.read("/run/localaid/status.json"))


def test_installed_enabled_active_with_status_line(container):
    c = container
    assert c.systemctl("is-enabled", "localaid", check=False).stdout.strip() == "enabled"
    c.wait_for_unit("localaid.service", "active", timeout=30)
    line = wait_for(lambda: c.unit_property("localaid", "StatusText") or None, timeout=15)
    assert line.startswith("ollama "), line
    # No driver in the container: the real nvidia-ml-py (bundled) finds no library and says so.
    wait_for(lambda: "no NVIDIA GPU found: running on CPU" in c.unit_property("localaid", "StatusText"),
             timeout=15)
    shown = c.systemctl("status", "localaid", "--no-pager", check=False).stdout
    assert f"Status: \"{line}\"" in shown
    doc = wait_for(lambda: status_doc(c), timeout=10)
    assert doc["status_line"] and doc["pid"] == int(c.unit_property("localaid", "MainPID"))
    assert [s["name"] for s in doc["services"]] == ["ollama"]


def test_starts_the_ollama_setup_job_and_reports_its_failure(container):
    """The daemon itself starts localaid-ollama-setup.service; here the script path is missing."""
    c = container
    line = wait_for(lambda: (t := c.unit_property("localaid", "StatusText")) and "ollama setup failed" in t and t,
                    timeout=60)
    assert "/nonexistent/install.sh" in line and "retry in" in line
    assert c.unit_property("localaid-ollama-setup.service", "Result") == "exit-code"


def test_supervises_a_running_service(container):
    c = container
    doc = wait_for(lambda: (d := status_doc(c))["services"][0]["state"] == "ok" and d, timeout=20)
    assert doc["services"][0]["probe_latency"] < 1.0
    r = c.run(["localaid", "status"], check=False)
    assert "ollama" in r.stdout and "ok" in r.stdout
    r = c.run(["localaid", "status", "--json"], check=False)
    assert json.loads(r.stdout)["daemon"] == "active"


def test_config_check_cli(container):
    c = container
    r = c.run(["localaid", "config", "check"], check=False)
    assert r.returncode == 0, r.stderr
    c.write("/tmp/bad.yaml", "health:\n  interval: fast\n")
    r = c.run(["localaid", "config", "check", "/tmp/bad.yaml"], check=False)
    assert r.returncode != 0
    assert '/tmp/bad.yaml:2: health.interval: expected a duration such as "2s", got "fast"' in r.stderr


def test_sighup_with_bad_config_keeps_running_on_old_one(container):
    c = container
    pid = c.unit_property("localaid", "MainPID")
    good = c.read("/etc/localaid/localaid.yaml")
    try:
        c.write("/etc/localaid/localaid.yaml", good + "health:\n  failures: lots\n")
        c.systemctl("reload", "localaid")
        wait_for(lambda: "configuration not reloaded" in c.journal("localaid"), timeout=10)
        journal = c.journal("localaid")
        assert "localaid.yaml:" in journal and "health.failures" in journal
        assert c.is_active("localaid") == "active"
        assert c.unit_property("localaid", "MainPID") == pid
    finally:
        c.write("/etc/localaid/localaid.yaml", good)
    c.systemctl("reload", "localaid")
    wait_for(lambda: "configuration reloaded" in c.journal("localaid"), timeout=10)
    assert c.unit_property("localaid", "MainPID") == pid


def test_watchdog_restarts_a_hung_daemon(container):
    c = container
    before = int(c.unit_property("localaid", "NRestarts"))
    watchdog = _seconds(c.unit_property("localaid", "WatchdogUSec"))
    assert 0 < watchdog <= 30
    t0 = time.monotonic()
    c.systemctl("kill", "--kill-who=main", "-s", "SIGSTOP", "localaid")
    wait_for(lambda: int(c.unit_property("localaid", "NRestarts")) > before, timeout=watchdog + 10, interval=0.5)
    took = time.monotonic() - t0
    assert took <= watchdog + 5, took
    c.wait_for_unit("localaid.service", "active", timeout=20)
    assert "watchdog timeout" in c.journal("localaid").lower()


def test_stop_and_kill_leave_supervised_services_running(container):
    c = container
    ollama_pid = c.unit_property("ollama", "MainPID")
    c.systemctl("stop", "localaid")
    assert c.is_active("localaid") == "inactive"
    assert c.is_active("ollama") == "active"
    assert c.unit_property("ollama", "MainPID") == ollama_pid
    assert "supervised services keep running" in c.journal("localaid")
    c.systemctl("start", "localaid")
    c.wait_for_unit("localaid.service", "active", timeout=20)
    restarts = int(c.unit_property("localaid", "NRestarts"))
    c.systemctl("kill", "--kill-who=main", "-s", "SIGKILL", "localaid")
    wait_for(lambda: c.is_active("localaid") == "active" and
             int(c.unit_property("localaid", "NRestarts")) > restarts, timeout=20)
    wait_for(lambda: status_doc(c)["services"][0]["state"] == "ok", timeout=20)
    assert c.unit_property("ollama", "MainPID") == ollama_pid


def test_status_when_daemon_is_down(container):
    c = container
    c.systemctl("stop", "localaid")
    try:
        r = c.run(["localaid", "status"], check=False)
        assert r.returncode == 3
        assert "localaid daemon is inactive" in r.stdout
    finally:
        c.systemctl("start", "localaid")


def test_bad_config_refuses_to_start_with_the_reason_in_the_journal(container):
    c = container
    good = c.read("/etc/localaid/localaid.yaml")
    try:
        c.write("/etc/localaid/localaid.yaml", "health:\n  intervall: 2s\n")
        c.systemctl("restart", "localaid", check=False)
        wait_for(lambda: c.is_active("localaid") == "failed", timeout=20)
        assert c.unit_property("localaid", "ExecMainStatus") == "78"
        journal = c.journal("localaid")
        assert "/etc/localaid/localaid.yaml:2: health.intervall: unknown key" in journal
        assert "did you mean" in journal and "interval" in journal
    finally:
        c.write("/etc/localaid/localaid.yaml", good)
        c.systemctl("reset-failed", "localaid", check=False)
        c.systemctl("restart", "localaid")
    c.wait_for_unit("localaid.service", "active", timeout=20)
