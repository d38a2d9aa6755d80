"""The system-sleep hook's half (`localaid gpu resumed KIND`, run by units/localaid-sleep after a
resume): record the moment, re-check the device nodes, wake the supervisor for a cycle at once.
Whether Ollama lost the GPU is the supervisor's to see; it starts the ladder if so. Under WSL2
it stays out of the way (no device nodes, no ladder there)."""

from __future__ import annotations

import os
import signal
import time

from localaid import fsutil, paths, procfs
from localaid.adapters.systemd import SystemdError
from localaid.provision.devices.ladder import GpuHost
from localaid.provision.job import Reporter

DEVICES_UNIT = "localaid-devices.service"


def resume_marker_path() -> str:
    return os.path.join(paths.RUN_DIR, "resume.json")


def resumed_main(args, config, systemd=None) -> int:
    kind = getattr(args, "kind", None) or "suspend"
    rep = Reporter(None)
    if procfs.on_wsl2():  # Windows pauses the VM; the GPU is not Linux's to re-check
        rep.say("resumed from sleep under WSL2: nothing to check", kind=kind)
        return 0
    os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
    fsutil.write_json(resume_marker_path(), {"mono": time.monotonic(), "wall": time.time(), "kind": kind})
    rep.say("resumed from sleep: checking the GPU", kind=kind)
    sd = GpuHost(systemd, systemd_timeout=5).sd
    rc = 0
    if config.gpu.devices.mode != "off":
        try:
            sd.start(DEVICES_UNIT)  # queued, not waited for
        except SystemdError as e:
            rep.warn(f"cannot start {DEVICES_UNIT}", error=e)
            rc = 1
    try:
        sd.kill("localaid.service", "main", int(signal.SIGUSR1))
    except SystemdError as e:
        rep.say("localaid.service not signalled (not running?)", error=e)
    return rc
