"""`localaid upgrade ollama|webui [--version V]`: explicit upgrades, run by the provisioning
modules. --version was checked by the parser (localaid.cli.validate) before this runs."""

from __future__ import annotations

from localaid.cli.common import call_area


def ollama(args) -> int:
    return call_area("localaid.provision.ollama", "upgrade_main", args)


def webui(args) -> int:
    return call_area("localaid.provision.webui", "upgrade_main", args)
