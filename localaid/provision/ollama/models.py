"""Pulling the configured models (ollama.models, and Open WebUI's embedding model: Config.wanted_models)
that Ollama does not have yet, with their progress in STATUS and the disk checked first.

The disk is checked twice: before the download for a model whose size the catalogue knows (the
auto pick), and as soon as Ollama names the size of each layer (its manifest comes before any
data), so that a model that cannot fit is stopped at the start with a clear error, not when
the disk is full and Open WebUI's database can no longer be written.
"""

from __future__ import annotations

import os

from localaid.catalog import BY_NAME
from localaid.provision.job import Reporter
from localaid.provision.ollama.layout import DEFAULT_MODELS_DIR
from localaid.pullmeter import PullMeter
from localaid.quantity import format_size

SPARE = 1_000_000_000  # bytes left free on the models' disk after a pull


class NoRoom(Exception):
    pass


def client(cfg, timeout: float = 5.0):
    from localaid.adapters.ollama import OllamaClient
    return OllamaClient(cfg.url, timeout=timeout)


def free_space(path: str) -> tuple[str, int]:
    """(the directory looked at, bytes free to unprivileged users) for `path` or, while it does
    not exist yet, its nearest existing parent."""
    while True:
        try:
            st = os.statvfs(path)
            return path, st.f_bavail * st.f_frsize
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def check_room(cfg, name: str, need: int) -> None:
    """Raise NoRoom when `need` more bytes would leave less than SPARE on the models' disk."""
    where, free = free_space(cfg.models_dir or DEFAULT_MODELS_DIR)
    if need + SPARE > free:
        raise NoRoom(f"not enough disk space for {name}: it needs {format_size(need)}, {format_size(free)} free "
                     f"on {where} (and {format_size(SPARE)} is kept spare); free some space, or set "
                     f"ollama.models_dir to a larger disk")


def room_before(cfg, name: str) -> None:
    """Before a pull: a model whose size the catalogue knows must fit (NoRoom)."""
    entry = BY_NAME.get(name)
    if entry is not None:
        check_room(cfg, name, entry.download)


def room_for_layers(cfg, meter: PullMeter, known: int) -> None:
    """During a pull: once Ollama names a new layer's size (meter had `known` layers before),
    what is left to download must fit (NoRoom)."""
    if len(meter.layers) > known:
        check_room(cfg, meter.model, meter.total - meter.done)


def pull_models(cfg, rep: Reporter, models: tuple | None = None) -> list[str]:
    """Pull `models` (default: ollama.models) that Ollama does not have yet; the failures."""
    from localaid.adapters.ollama import same_model
    models = cfg.models if models is None else models
    if not models:
        return []
    failures = []
    with client(cfg, timeout=10.0) as c:
        have = [m.name for m in c.tags()]
        missing = [s.name for s in models if not any(same_model(s.name, h) for h in have)]
        for i, name in enumerate(missing):
            rep.step(f"pulling model {name} ({i + 1}/{len(missing)})")
            error = _pull_one(cfg, c, rep, name)
            if error is None:
                rep.step(f"pulled model {name}")
            else:
                rep.warn(f"model {name} could not be pulled: {error}")
                failures.append(f"{name}: {error}")
    return failures


def _pull_one(cfg, c, rep: Reporter, name: str) -> str | None:
    """One pull, its progress as "pulling qwen3:8b 42 % of 5.2 GB, ~3 min"; the error, or None."""
    from localaid.adapters.ollama import OllamaError, PullProgress
    meter = PullMeter(name)

    def on_progress(p: PullProgress) -> None:
        known = len(meter.layers)
        meter.add(p.digest, p.total, p.completed)
        room_for_layers(cfg, meter, known)
        rep.progress("running", meter.words() if meter.total else f"pulling {name}: {p.status}",
                     meter.fraction if meter.total else None)

    try:
        room_before(cfg, name)
        c.pull(name, on_progress)
    except (OllamaError, NoRoom, OSError) as e:
        return str(e)
    return None
