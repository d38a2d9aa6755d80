"""`localaid config check [FILE]`: every problem as FILE:LINE: KEY: REASON."""

from __future__ import annotations

import sys

from localaid.cli.common import EX_CONFIG, EX_FAIL, EX_OK


def main(args) -> int:
    from localaid import config as config_mod
    path = args.file or args.config
    conf_d = None if args.file else args.conf_d
    try:
        cfg = config_mod.load(path, conf_d)
    except config_mod.ConfigError as e:
        print(str(e), file=sys.stderr)
        n = len(e.errors)
        print(f"{n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return EX_CONFIG if args.file is None else EX_FAIL
    if not args.quiet:
        print("configuration valid: " + (", ".join(cfg.sources) or f"{path} absent, all defaults"))
    return EX_OK
