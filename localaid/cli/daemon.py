"""`localaid daemon`: the supervision loop localaid.service runs."""

from __future__ import annotations


def main(args) -> int:
    from localaid import supervisor
    return supervisor.main(args.config, args.conf_d)
