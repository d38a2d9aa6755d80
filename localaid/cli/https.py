"""`localaid https ca` and `localaid https renew`: thin; the work is in
localaid.provision.https, imported only when it runs."""

from __future__ import annotations

from localaid.cli.common import call_area

HTTPS = "localaid.provision.https.commands"


def ca(args) -> int:
    return call_area(HTTPS, "ca_main", args)


def renew(args) -> int:
    return call_area(HTTPS, "renew_main", args)
