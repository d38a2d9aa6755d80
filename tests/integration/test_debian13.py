"""The same .deb on Debian 13 (systemd 257, Python 3.13): installs, starts, supervises."""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, boot
from harness import standin_unit, wait_for

CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
webui:
  enabled: false
"""

STANDIN_UNIT = standin_unit(11434, description="stand-in ollama")


@pytest.fixture(scope="module")
def trixie(deb):
    r = subprocess.run([str(REPO / "tools/build-rootfs"), "--suite", "trixie"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"build-rootfs --suite trixie failed:\n{r.stderr[-3000:]}")
    rootfs = Path(r.stdout.strip().splitlines()[-1])

    def setup(c):
        c.write("/etc/systemd/system/ollama.service", STANDIN_UNIT)
        c.systemctl("daemon-reload")
        c.systemctl("start", "ollama.service")

    c = boot(rootfs, deb, install=True, config=CONFIG, setup=setup, name="debian13", private_network=True)
    yield c
    c.stop()


def test_versions_are_debian13(trixie):
    assert trixie.run(["python3", "-c", "import sys; print(sys.version_info[:2])"]).stdout.strip() == "(3, 13)"
    assert trixie.run(["systemctl", "--version"]).stdout.split()[1] >= "257"


def test_daemon_active_and_supervising(trixie):
    c = trixie
    c.wait_for_unit("localaid.service", "active", timeout=30)
    doc = wait_for(lambda: (d := json.loads(c.read("/run/localaid/status.json")))["services"][0]["state"] == "ok"
                   and d, timeout=30)
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
