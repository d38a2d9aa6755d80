"""The shipped defaults, as shipped (no preseeded configuration), on a machine that reaches
neither Ollama's download site nor the package index: a private network with no route out.

What a user sees must be a short, true STATUS with retries, and nothing half-installed: no
Ollama binary, no venv marked complete, no Open WebUI unit started or enabled.
"""

from __future__ import annotations

import json

from conftest import install_deb
from harness import wait_for

NOT_INSTALLED = ("ollama not installed (setup failed:", "open-webui not installed (setup failed:")


def test_shipped_defaults_offline_say_so_retry_and_leave_nothing_half_done(make_container, deb):
    c = make_container(with_deb=True, private_network=True, name="offline-defaults")
    assert not c.exists("/etc/localaid/localaid.yaml")
    install_deb(c, deb)
    assert c.read("/etc/localaid/localaid.yaml") == c.read("/usr/share/localaid/localaid.yaml")

    def both_failed():
        t = c.unit_property("localaid", "StatusText")
        return t if all(s in t for s in NOT_INSTALLED) else None
    line = wait_for(both_failed, timeout=150, interval=1.0, message="both set-up jobs reported as failed")
    assert "stopped by admin" not in line and "retry in" in line
    assert len(line) <= 320, f"STATUS is {len(line)} characters: {line}"
    assert c.is_active("localaid.service") == "active"

    # `localaid status` has the whole story and says the stack is not healthy.
    r = c.run(["localaid", "status", "--json"], check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert {s["name"]: s["state"] for s in doc["services"]} == {"ollama": "not installed",
                                                                "open-webui": "not installed"}

    # Nothing half-installed.
    assert not c.exists("/usr/local/bin/ollama")
    assert c.run(["sh", "-c", "ls /var/lib/localaid/webui/venvs/*/.localaid-complete"], check=False).returncode != 0
    assert not c.exists("/var/lib/localaid/webui/current")
    assert c.is_active("open-webui.service") in ("inactive", "failed")
    assert c.run(["systemctl", "is-enabled", "open-webui.service"], check=False).stdout.strip() != "enabled"

    # Both jobs are retried with backoff (the journal says when), not given up.
    journal = c.journal("localaid", lines=400)
    assert "retrying in" in journal, journal[-2000:]
