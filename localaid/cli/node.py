"""`localaid node add` (on the UI host) and `localaid node join` (on a GPU node): thin; the work
is in localaid.provision.https.nodejoin, imported only when it runs."""

from __future__ import annotations

from localaid.cli.common import call_area

NODES = "localaid.provision.https.nodejoin"


def add(args) -> int:
    return call_area(NODES, "add_main", args)


def join(args) -> int:
    return call_area(NODES, "join_main", args)
