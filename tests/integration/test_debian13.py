"""The same .deb on Debian 13 (systemd 257, Python 3.13): installs, starts, supervises, and
brings up Open WebUI, which needs Python 3.11 or 3.12, with a Python that uv installs.

uv's interpreter download is answered by tests/fakes/python (a CPython 3.11 archive packed from
Debian 12's own python3.11 and the downloads list uv reads, webui.managed_python.downloads_json):
the real download site cannot be reached from our machines. open-webui is the fake distribution
from the wheelhouse, as in test_webui.py.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, boot
from harness import standin_unit, wait_for

MANAGED = "/var/lib/localaid/python/cpython-3.11.2-linux-x86_64-gnu/bin/python3.11"
BLOCKED = "open-webui not installed (needs Python 3.11 or 3.12, see localaid doctor)"

CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
webui:
  find_links: [/opt/wheelhouse]
  # first an interpreter that cannot run Open WebUI (test_an_unusable_python_...), then auto
  python: /usr/bin/python3
  managed_python:
    downloads_json: file://{double}/downloads.json
health:
  start_grace:
    webui: 30s
"""

STANDIN_UNIT = standin_unit(11434, description="stand-in ollama")


@pytest.fixture(scope="module")
def trixie(deb, wheelhouse, python_double):
    r = subprocess.run([str(REPO / "tools/build-rootfs"), "--suite", "trixie"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"build-rootfs --suite trixie failed:\n{r.stderr[-3000:]}")
    rootfs = Path(r.stdout.strip().splitlines()[-1])

    def setup(c):
        c.write("/etc/systemd/system/ollama.service", STANDIN_UNIT)
        c.systemctl("daemon-reload")
        c.systemctl("start", "ollama.service")
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")  # wheels only from /opt/wheelhouse

    c = boot(rootfs, deb, install=True, config=CONFIG.format(double=python_double), setup=setup,
             name="debian13", private_network=True,
             binds=[(str(wheelhouse), "/opt/wheelhouse", True), (str(python_double), str(python_double), True)])
    yield c
    c.stop()


def status(c) -> dict:
    return json.loads(c.read("/run/localaid/status.json"))


def test_versions_are_debian13(trixie):
    assert trixie.run(["python3", "-c", "import sys; print(sys.version_info[:2])"]).stdout.strip() == "(3, 13)"
    assert trixie.run(["systemctl", "--version"]).stdout.split()[1] >= "257"


def test_an_unusable_python_is_said_briefly_and_not_retried(trixie):
    """webui.python names Debian 13's 3.13: only the admin can fix that. STATUS says it in a few
    words (never "stopped by admin"), doctor in full, and the set-up job is not retried."""
    c = trixie
    line = wait_for(lambda: BLOCKED in (t := status(c)["status_line"]) and t, timeout=60)
    assert "stopped by admin" not in line and len(line) < 320, line
    assert [f for f in line.split(" · ") if "open-webui" in f] == [BLOCKED], line  # nothing else said of it
    job = status(c)["jobs"]["webui-setup"]
    assert job["state"] == "blocked" and job["failures"] == 1
    journal = c.journal("localaid-webui-setup")
    assert "webui.python /usr/bin/python3 is Python 3.13" in journal and "needs Python 3.11 or 3.12" in journal
    doctor = c.run(["localaid", "doctor"], check=False).stdout
    assert "open-webui python" in doctor and "is Python 3.13" in doctor, doctor
    time.sleep(3)
    assert status(c)["jobs"]["webui-setup"]["failures"] == 1  # not tried again


def test_auto_installs_a_python_with_uv_and_open_webui_serves(trixie):
    c = trixie
    c.write("/etc/localaid/conf.d/50-auto.yaml", "webui:\n  python: auto\n")
    c.systemctl("reload", "localaid")  # a configuration change: the blocked job runs again
    wait_for(lambda: any(s["name"] == "open-webui" and s["state"] == "ok" for s in status(c)["services"]),
             timeout=240)
    assert "open-webui ok :3000" in status(c)["status_line"]
    assert c.run(["stat", "-c", "%a %U %G", MANAGED]).stdout.strip() == "755 root root"
    pid = c.unit_property("open-webui", "MainPID")
    assert c.run(["readlink", f"/proc/{pid}/exe"]).stdout.strip() == MANAGED  # the service runs it
    journal = c.journal("localaid-webui-setup")
    assert "Python for Open WebUI installed by uv" in journal and "version=3.11.2" in journal
    # downloaded by the service user in a build unit, never by root
    assert "localaid-webui-build-python.service" in c.run(["journalctl", "--no-pager", "-o", "cat"]).stdout
    doctor = c.run(["localaid", "doctor"], check=False).stdout
    assert "installed by uv: the system's python3 is 3.13" in doctor, doctor
    # a later build (an upgrade) reuses it
    before = c.read("/var/lib/localaid/python/installed.json")
    r = c.run(["localaid", "upgrade", "webui", "--version", "0.12.5"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "downloading Python" not in r.stdout and c.read("/var/lib/localaid/python/installed.json") == before
    cfg = c.read("/var/lib/localaid/webui/venvs/0.12.5/pyvenv.cfg")
    assert "/var/lib/localaid/python/cpython-3.11.2-linux-x86_64-gnu/bin" in cfg, cfg


def test_daemon_active_and_supervising(trixie):
    c = trixie
    c.wait_for_unit("localaid.service", "active", timeout=30)
    doc = wait_for(lambda: (d := status(c))["services"][0]["state"] == "ok" and d, timeout=30)
    assert doc["status_line"].startswith("ollama ok")
    assert c.unit_property("localaid", "StatusText").startswith("ollama ok")


def test_hung_service_restarted_on_debian13(trixie):
    c = trixie
    pid = c.unit_property("ollama", "MainPID")
    c.systemctl("kill", "--kill-who=main", "-s", "SIGSTOP", "ollama")
    wait_for(lambda: c.unit_property("ollama", "MainPID") not in ("0", pid), timeout=20)
    wait_for(lambda: json.loads(c.read("/run/localaid/status.json"))["services"][0]["state"] == "ok", timeout=20)
    assert "kill-restart ollama.service: ok cause=hung" in c.journal("localaid")


def test_udev_rule_is_valid_for_udevadm(trixie):
    """udevadm verify (systemd 254 and later) parses the shipped rule as udevd would."""
    r = trixie.run(["udevadm", "verify", "/lib/udev/rules.d/70-localaid-nvidia.rules"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_chat_model_is_picked_on_debian13(trixie):
    """ollama.models: auto on Python 3.13 and systemd 257: the daemon picks the CPU tier and
    records it, and `localaid models --suggest` shows it (the stand-in Ollama here cannot pull
    it: the pull, Open WebUI's default and the first chat are test_auto_model.py's)."""
    c = trixie
    choice = "/var/lib/localaid/model-choice.json"
    doc = wait_for(lambda: c.exists(choice) and json.loads(c.read(choice)), timeout=30)
    assert doc["model"].startswith("qwen3:") and doc["basis"].startswith("no GPU, "), doc
    assert f"choose-model {doc['model']}: ok" in c.journal("localaid")
    out = c.run(["localaid", "models", "--suggest"]).stdout
    assert re.search(rf"^{re.escape(doc['model'])} .*← picked$", out, re.M), out
