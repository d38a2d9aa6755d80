"""`localaid provision STEP` and `localaid gpu recover|resumed`: privileged steps localaid's units
run (localaid-*.service, the system-sleep hook). Thin: the provisioning modules do the work and
are imported by name only when the step runs."""

from __future__ import annotations

from localaid.cli.common import call_area

DEVICES, OLLAMA, WEBUI = "localaid.provision.devices", "localaid.provision.ollama", "localaid.provision.webui"


def devices(args) -> int:
    return call_area(DEVICES, "devices_main", args)


def ollama(args) -> int:
    return call_area(OLLAMA, "provision_main", args)


def webui(args) -> int:
    return call_area(WEBUI, "provision_main", args)


def gpu_recover(args) -> int:
    return call_area(DEVICES, "gpu_recover_main", args)


def gpu_resumed(args) -> int:
    return call_area(DEVICES, "resumed_main", args)
