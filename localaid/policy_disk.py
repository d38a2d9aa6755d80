"""Free disk space in STATUS (pure): a warning below disk.warn_free, "disk full" below
disk.critical_free, for the disks of Ollama's models and Open WebUI's data (one line per disk)."""

from __future__ import annotations

from localaid.quantity import format_size
from localaid.records import DiskObs

WHAT = {"models": "Ollama's models", "webui": "Open WebUI's data"}


def disk_level(config, d: DiskObs) -> str:
    """ok | low | full (unknown free space is ok: nothing to say)."""
    if d.free is None or d.free >= config.disk.warn_free:
        return "ok"
    return "full" if d.free < config.disk.critical_free else "low"


def disk_fragment(config, disks: tuple[DiskObs, ...]) -> str | None:
    """ "disk full: 1.2 GB free for Ollama's models and Open WebUI's data (/usr/share/ollama/…)" """
    parts, seen = [], {}
    for d in disks:
        level = disk_level(config, d)
        if level == "ok":
            continue
        if d.fs in seen:  # the same disk: named once, for both
            seen[d.fs][2].append(WHAT.get(d.what, d.what))
            continue
        seen[d.fs] = (level, d, [WHAT.get(d.what, d.what)])
    for level, d, whats in seen.values():
        head = "disk full" if level == "full" else "disk low"
        parts.append(f"{head}: {format_size(d.free)} free for {' and '.join(whats)} ({d.path})")
    return " · ".join(parts) or None
