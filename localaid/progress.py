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
