"""A driver updated under the running kernel module: announce the reboot it needs where the
system looks for one (/run/reboot-required and .pkgs: Debian's unattended-upgrades, Ubuntu's
update-notifier and motd read them). localaid never reloads the driver on its own."""

from __future__ import annotations

import os
import subprocess

from localaid import fsutil, procfs

REBOOT_REQUIRED = os.environ.get("LOCALAID_REBOOT_REQUIRED", "/run/reboot-required")
FALLBACK_PACKAGE = "nvidia-driver"


def owning_package(path: str) -> str:
    """The package that installed `path` (dpkg), else the driver's usual name."""
    try:
        r = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return FALLBACK_PACKAGE
    first = r.stdout.split(":", 1)[0].strip() if r.returncode == 0 else ""
    return first or FALLBACK_PACKAGE


def announce_if_mismatch(rep) -> str | None:
    """When the library on disk is of another release than the running module, write the
    reboot-required files (once; other packages' lines kept); the words said, or None."""
    running, installed = procfs.running_driver_version(), procfs.installed_library_version()
    if not procfs.driver_versions_differ(running, installed):
        return None
    lib = procfs.nvml_library()
    package = owning_package(lib) if lib else FALLBACK_PACKAGE
    if not os.path.exists(REBOOT_REQUIRED):
        fsutil.atomic_write(REBOOT_REQUIRED, "*** System restart required ***\n")
    pkgs = REBOOT_REQUIRED + ".pkgs"
    try:
        with open(pkgs) as f:
            listed = f.read().split()
    except FileNotFoundError:
        listed = []
    if package not in listed:
        with open(pkgs, "a") as f:
            f.write(package + "\n")
    text = procfs.mismatch_text(running, installed)
    rep.say(f"{text}; announced in {REBOOT_REQUIRED} ({package})")
    return text
