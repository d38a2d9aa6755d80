"""Readers of /proc for the NVIDIA driver's state: pure parsing, no changes, no privileges.

The daemon, `localaid doctor` and the device job all ask the same questions (is the driver
loaded, which character majors does it use, which GPU minors exist), so they live here, apart
from the privileged code that acts on the answers.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

PROC = os.environ.get("LOCALAID_PROC", "/proc")


@dataclasses.dataclass(frozen=True)
class Driver:
    loaded: bool
    modules: frozenset[str]
    majors: dict
    gpu_minors: tuple[int, ...]
    params: dict  # DeviceFileUID/GID/Mode from /proc/driver/nvidia/params


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def char_majors(proc: str = PROC) -> dict[str, int]:
    """Character device majors by name from /proc/devices."""
    out, section = {}, None
    for line in _read(os.path.join(proc, "devices")).splitlines():
        if line.endswith(":"):
            section = line
            continue
        parts = line.split()
        if section == "Character devices:" and len(parts) == 2 and parts[0].isdigit():
            out[parts[1]] = int(parts[0])
    return out


def driver_state(proc: str = PROC) -> Driver:
    modules = frozenset(line.split()[0] for line in _read(os.path.join(proc, "modules")).splitlines() if line)
    majors = char_majors(proc)
    frontend = majors.get("nvidia-frontend", majors.get("nvidia"))
    minors = set()
    for info in glob.glob(os.path.join(proc, "driver/nvidia/gpus/*/information")):
        m = re.search(r"^Device Minor:\s*(\d+)", _read(info), re.M)
        if m:
            minors.add(int(m.group(1)))
    loaded = frontend is not None or "nvidia" in modules or "nvidia_current" in modules
    if loaded and not minors:
        minors.add(0)  # /proc/driver/nvidia not readable here: assume one GPU
    params = {}
    for line in _read(os.path.join(proc, "driver/nvidia/params")).splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("DeviceFileUID", "DeviceFileGID", "DeviceFileMode") and v.strip().isdigit():
            params[k.strip()] = int(v.strip())
    return Driver(loaded, modules, majors, tuple(sorted(minors)), params)


def _module_loaded(drv: Driver, part: str) -> bool:
    """nvidia_<part>, or Debian's renamed nvidia_current_<part>, in /proc/modules."""
    return any(m in (f"nvidia_{part}", f"nvidia_current_{part}") for m in drv.modules)


def uvm_loaded(drv: Driver) -> bool:
    return "nvidia-uvm" in drv.majors or _module_loaded(drv, "uvm")
