"""tools/gpu-check on a machine without an NVIDIA driver (ours): a FAIL row that says so, exit 1,
and nothing changed. On a GPU machine it is run by hand (README, issue notes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gpu-check"


def test_without_a_driver_it_fails_clearly(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "devices").write_text("Character devices:\n  1 mem\n  4 tty\n\nBlock devices:\n  8 sd\n")
    (proc / "modules").write_text("")
    r = subprocess.run([sys.executable, str(TOOL), "--json"], capture_output=True, text=True, timeout=60,
                       env={"LOCALAID_PROC": str(proc), "PATH": "/usr/bin:/bin"})
    rows = json.loads(r.stdout)
    assert r.returncode == 1, r.stderr
    first = rows[0]
    assert first["result"] == "FAIL"
    assert first["check"] in ("driver", "root")
    assert "no NVIDIA kernel driver" in first["detail"] or "run as root" in first["detail"]
    assert rows[-1]["check"] == "time"


def test_help_is_a_manual():
    r = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--fix" in r.stdout and "systemd-run" in r.stdout and "Exit status" in r.stdout
