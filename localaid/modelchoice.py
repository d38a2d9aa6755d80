"""The model picked for `ollama.models: auto`, kept in /var/lib/localaid/model-choice.json.

The daemon records a pick once (localaid.policy_models decides it, localaid.act writes it);
config.load() reads it back, so that every reader of the configuration (the daemon, the set-up
jobs, `localaid status`, doctor) sees the picked model as ollama.models. It survives reboots and
package upgrades; `apt purge` removes it with /var/lib/localaid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from localaid import fsutil, paths
from localaid.catalog import Pick

_FIELDS = {f.name for f in dataclasses.fields(Pick)}


def read(path: str | None = None) -> Pick | None:
    """The recorded pick; None when there is none, or it is unreadable or malformed."""
    try:
        with open(path or paths.MODEL_CHOICE_FILE, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not raw["model"]:
        return None
    try:
        pick = Pick(**{k: v for k, v in raw.items() if k in _FIELDS})
        return dataclasses.replace(pick, made=float(pick.made or 0.0))
    except (TypeError, ValueError):
        return None


def write(pick: Pick, path: str | None = None) -> Pick:
    """Record `pick` (atomically, 0644: nothing secret), stamped with the time; returns it."""
    path = path or paths.MODEL_CHOICE_FILE
    pick = dataclasses.replace(pick, made=time.time())
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fsutil.write_json(path, dataclasses.asdict(pick))
    return pick


def applied(config, pick: Pick | None):
    """`config` with an auto pick as ollama.models (the model kept warm); unchanged when
    ollama.models is a list, on a UI host (no Ollama of its own), or nothing is picked yet."""
    from localaid.config.values import ModelSpec
    o = config.ollama
    if not o.picks_model or pick is None:
        return config
    return dataclasses.replace(config, ollama=dataclasses.replace(o, models=(ModelSpec(_tagged(pick.model)),),
                                                                  chosen=pick))


def _tagged(name: str) -> str:
    return name if ":" in name.rpartition("/")[2] else name + ":latest"
