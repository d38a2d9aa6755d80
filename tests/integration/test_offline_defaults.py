"""The shipped defaults, as shipped (no preseeded configuration), on a machine that reaches
neither Ollama's download site nor the package index: a private network with no route out.

What a user sees must be a short, true STATUS with retries, and nothing half-installed: no
Ollama binary, no venv marked complete, no Open WebUI unit started or enabled.
"""

from __future__ import annotations

import json

from conftest import install_deb
from harness import wait_for

# Ollama's job retries its download inside its own time budget before it fails (and is then
# retried by the daemon): either way its fragment says what is wrong and that it retries.
OLLAMA = ("ollama installing (install script download failed: cannot connect", "ollama not installed (setup failed:")
WEBUI = "open-webui not installed (setup failed:"


def test_shipped_defaults_offline_say_so_retry_and_leave_nothing_half_done(make_container, deb):
    c = make_container(with_deb=True, private_network=True, name="offline-defaults")
    assert not c.exists("/etc/localaid/localaid.yaml")
    install_deb(c, deb)
    assert c.read("/etc/localaid/localaid.yaml") == c.read("/usr/share/localaid/localaid.yaml")

    def both_failed():
        t = c.unit_property("localaid", "StatusText")
        return t if WEBUI in t and any(o in t for o in OLLAMA) else None
    line = wait_for(both_failed, timeout=150, interval=1.0, message="both set-up jobs reported as failing")
    assert "stopped by admin" not in line and "retry" in line
    assert len(line) <= 320, f"STATUS is {len(line)} characters: {line}"
    assert c.is_active("localaid.service") == "active"

    # `localaid status` has the whole story and says the stack is not healthy.
    r = c.run(["localaid", "status", "--json"], check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    states = {s["name"]: s["state"] for s in doc["state"]["services"]}
    assert states["open-webui"] == "not installed" and states["ollama"] in ("installing", "not installed")

    # Nothing half-installed.
    assert not c.exists("/usr/local/bin/ollama")
    assert c.run(["sh", "-c", "ls /var/lib/localaid/webui/venvs/*/.localaid-complete"], check=False).returncode != 0
    assert not c.exists("/var/lib/localaid/webui/current")
    assert c.is_active("open-webui.service") in ("inactive", "failed")
    assert c.run(["systemctl", "is-enabled", "open-webui.service"], check=False).stdout.strip() != "enabled"

    # Both jobs are retried with backoff (the journal says when), not given up.
    journal = c.journal("localaid", lines=400)
    assert "retrying in" in journal, journal[-2000:]
