"""Which distribution this is (from os-release's text), and the NVIDIA driver advice that fits it
(pure: procfs.distro() reads the file).

Debian packages the driver as `nvidia-driver` in its non-free component (newer branches for
Debian 12 come from bookworm-backports). Ubuntu packages each branch as `nvidia-driver-<branch>`,
and `ubuntu-drivers install` picks the one recommended for the card. Anything else gets both.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from localaid.records import NO_DRIVER

NO_DRIVER_HEAD = "NVIDIA GPU without driver"  # STATUS's start for a card without its driver, on every family
UBUNTU_INSTALL = "sudo ubuntu-drivers install"


@dataclass(frozen=True)
class Distro:
    id: str = ""
    family: str = "other"      # "debian", "ubuntu" or "other"
    version_id: str = ""
    codename: str = ""


def parse(text: str) -> Distro:
    """os-release(5)'s KEY=value lines (values may be quoted) → Distro. Ubuntu and its
    derivatives (ID_LIKE=ubuntu) are "ubuntu"; Debian and other derivatives are "debian"."""
    fields = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*([A-Z0-9_]+)=(.*)", line)
        if m:
            try:
                words = shlex.split(m.group(2))
            except ValueError:
                continue
            fields[m.group(1)] = words[0] if words else ""
    ids = [fields.get("ID", "").lower()] + fields.get("ID_LIKE", "").lower().split()
    family = "ubuntu" if "ubuntu" in ids else "debian" if "debian" in ids else "other"
    return Distro(fields.get("ID", "").lower(), family, fields.get("VERSION_ID", ""), fields.get("VERSION_CODENAME", ""))


def no_driver_status(d: Distro) -> str:
    """STATUS's words for an NVIDIA card with no driver installed."""
    if d.family == "ubuntu":
        return f"{NO_DRIVER_HEAD}: {UBUNTU_INSTALL} and reboot"
    return NO_DRIVER


def install_advice(d: Distro) -> str:
    """`localaid doctor`'s steps to install the driver where none was ever installed."""
    ubuntu = (f"{UBUNTU_INSTALL} (it installs the nvidia-driver-<branch> recommended for this card; "
              f"`ubuntu-drivers list` shows the others), reboot")
    debian = "enable the non-free and non-free-firmware components in apt's sources, apt install nvidia-driver, reboot"
    if d.family == "ubuntu":
        return ubuntu
    if d.family == "debian":
        return debian
    return f"Debian: {debian}; Ubuntu: {ubuntu}"


def gpu_speed_advice(d: Distro) -> str:
    """Doctor's hint when no NVIDIA GPU is found at all."""
    if d.family == "ubuntu":
        return f"install the NVIDIA driver for GPU speed: {UBUNTU_INSTALL}"
    if d.family == "debian":
        return "install the NVIDIA driver (nvidia-driver from non-free) for GPU speed"
    return "install the NVIDIA driver (Debian: nvidia-driver from non-free; Ubuntu: ubuntu-drivers install) for GPU speed"


def upgrade_advice(d: Distro, need: int) -> str:
    """Doctor's steps when the running driver is older than Ollama needs (`need`: a major)."""
    ubuntu = (f"Ubuntu: {UBUNTU_INSTALL}, or apt install nvidia-driver-<branch> with a branch of {need} or newer "
              f"(`ubuntu-drivers list` shows them)")
    debian = "Debian: apt install -t bookworm-backports nvidia-driver (or trixie's nvidia-driver)"
    if d.family == "ubuntu":
        return f"upgrade the driver: {ubuntu}; then reboot"
    if d.family == "debian" and d.codename == "bookworm":
        return "upgrade the driver package: apt install -t bookworm-backports nvidia-driver; then reboot"
    if d.family == "debian" and d.codename:
        return f"upgrade the driver package: apt install nvidia-driver from {d.codename} (or its backports); then reboot"
    return f"upgrade the driver package: {debian}; {ubuntu}; then reboot"
