"""What every command shares: exit statuses, loading the configuration, calling an area."""

from __future__ import annotations

import importlib
import sys

EX_OK, EX_FAIL, EX_USAGE, EX_NOT_RUNNING, EX_CONFIG = 0, 1, 2, 3, 78


def load_config(args):
    """The configuration named by --config/--conf-d; on error print FILE:LINE: KEY: REASON and
    leave with exit status 78."""
    from localaid import config as config_mod
    try:
        return config_mod.load(args.config, args.conf_d)
    except config_mod.ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(EX_CONFIG)


def call_area(module: str, function: str, args) -> int:
    """Run `function(args, config)` of an area module (localaid.provision.*), imported by name
    only now: those modules import what the privileged steps need, which plain commands don't."""
    config = load_config(args)
    return getattr(importlib.import_module(module), function)(args, config)


def size_text(n: float) -> str:
    """Bytes as a download or a model size reads: "1.0 GB", "250.0 MB", "0 B"."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def clock_text(seconds: float) -> str:
    """A duration as a clock reads: "4:05", "1:02:03"."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"
