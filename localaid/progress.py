"""Progress of slow work (install script, venv build, model pull) that runs beside the loop.

A provisioning step writes /run/localaid/progress/<job>.json atomically; the supervisor reads it
each cycle and shows it in STATUS. No sockets, no shared memory: a file that survives either side
being restarted.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from localaid import fsutil, paths


@dataclass(frozen=True)
class Progress:
    job: str
    state: str  # running | done | failed
    text: str  # one human line: "downloading install script (3/5)"
    fraction: float | None = None
    updated: float = 0.0
    pid: int = 0
    detail: tuple[str, ...] = ()  # last lines of output, for `localaid status`


def _path(job: str) -> str:
    return os.path.join(paths.PROGRESS_DIR, job + ".json")


def report(job: str, state: str, text: str, fraction: float | None = None,
           detail: tuple[str, ...] | list[str] = ()) -> None:
    os.makedirs(paths.PROGRESS_DIR, mode=0o755, exist_ok=True)
    entry = Progress(job, state, text, fraction, time.time(), os.getpid(), tuple(detail))
    fsutil.write_json(_path(job), asdict(entry))


def read(job: str) -> Progress | None:
    raw = fsutil.read_json(_path(job))
    if not isinstance(raw, dict):
        return None
    try:
        raw["detail"] = tuple(raw.get("detail") or ())
        return Progress(**raw)
    except TypeError:
        return None


def read_all() -> dict[str, Progress]:
    try:
        names = os.listdir(paths.PROGRESS_DIR)
    except FileNotFoundError:
        return {}
    out = {}
    for name in sorted(names):
        if name.endswith(".json") and not name.startswith("."):
            entry = read(name[:-5])
            if entry is not None:
                out[entry.job] = entry
    return out


# ------------------------------------------------------------------------ who holds a marker
def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot, /proc/PID/stat field 22), or None
    when there is no such process. With the PID it names one process for good: a PID reused by
    another process after a crash has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def write_owner(path: str) -> None:
    """A marker file naming this process: "PID START"."""
    pid = os.getpid()
    fsutil.atomic_write(path, f"{pid} {process_start(pid) or 0}\n")


def owner_alive(path: str) -> bool:
    """Whether the process a marker names still runs (same PID and start time). A missing or
    unreadable marker, a dead process or a reused PID: False."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().split()
        pid = int(fields[0])
        start = int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return False
    now = process_start(pid)
    return now is not None and (start in (None, 0) or now == start)

