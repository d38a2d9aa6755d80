"""`localaid backup [--list]` and `localaid restore [BACKUP]`: thin; the work is in
localaid.provision.webui (snapshot, restore, backups), imported only when it runs."""

from __future__ import annotations

from localaid.cli.common import call_area

WEBUI = "localaid.provision.webui"


def backup(args) -> int:
    return call_area(WEBUI, "list_main" if args.list else "backup_main", args)


def restore(args) -> int:
    return call_area(WEBUI, "restore_main" if args.backup else "list_main", args)
