"""Every unit localaid ships is sandboxed: `systemd-analyze security --offline` exposure at most
5.0 (root oneshots that must mknod, modprobe, useradd or run Ollama's install script), the
long-running ones far lower. systemd-analyze comes with systemd, which tools/setup-host installs
(systemd-container depends on it); PID 1 need not be systemd for --offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "units"
LIMITS = {"localaid.service": 2.5, "open-webui.service": 2.0, "localaid-backup.service": 2.5}
DEFAULT_LIMIT = 5.0
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))


def exposure(unit: Path) -> float:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run tools/setup-host"
    r = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, f"no exposure level for {unit.name}:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    return float(m.group(1))


@pytest.mark.parametrize("name", SERVICES)
def test_unit_is_sandboxed(name):
    limit = LIMITS.get(name, DEFAULT_LIMIT)
    got = exposure(UNITS / name)
    assert got <= limit, f"{name}: exposure {got} > {limit}"


def test_every_unit_is_checked():
    assert {"localaid.service", "localaid-ollama-setup.service", "localaid-webui-setup.service",
            "localaid-devices.service", "localaid-gpu-recover.service", "open-webui.service",
            "localaid-backup.service"} <= set(SERVICES)
