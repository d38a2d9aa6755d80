#!/usr/bin/python3
"""GPU healing, per scenario: time to detect (localaid's action in the journal) and time to healed
(the model back on the GPU, or the "reboot required" verdict), in Debian 12 containers with the
fake GPU of tests/integration/test_gpu.py (fake NVML library, fake /proc, recording modprobe).

    sudo bench/gpu_recovery.py [--runs 3] [--deb out/localaid_*.deb] [--rootfs DIR]

Scenarios:
  boot-race     Ollama started before the device nodes were usable; localaid-devices fixes them
  cpu-fallback  Ollama's model runs on the CPU (fault switch), cleared after the restart
  xid-48        critical Xid 48 with the GPU gone until nvidia_uvm is reloaded: the ladder heals
  xid-79-lost   Xid 79, GPU lost for good: the ladder fails, verdict "reboot required"
  resume        resume hook run after a "suspend" left the model on the CPU: the ladder heals
The host polls the container every ~0.2 s: figures have that resolution. Time to healed
includes the supervisor's preload of the model after Ollama's restart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, deb_and_rootfs
sys.path.insert(0, str(REPO))

import conftest  # noqa: E402
import test_gpu as t  # noqa: E402
from harness import wait_for  # noqa: E402
from tests.fakes.nvml import support  # noqa: E402


def scenario(name, boot):
    """Returns (detect seconds, healed seconds) of one run."""
    race = name == "boot-race"
    c = t.make_gpu_box(boot, LIB, nodes="bad" if race else "good", race=race)
    try:
        if race:
            t0 = time.monotonic()  # localaid was just installed and started: its first cycle
            wait_for(lambda: "cause=boot-race" in t.journal(c, "localaid.service"), timeout=60)
            detect = time.monotonic() - t0
            wait_for(lambda: t.on_gpu(c), timeout=90)
            return detect, time.monotonic() - t0
        wait_for(lambda: t.on_gpu(c), timeout=60)
        time.sleep(1.5)  # steady state, the Xid event thread registered
        if name == "cpu-fallback":
            t0 = time.monotonic()
            c.write("/run/fake-ollama/faults.json", '{"cpu": true}')
            wait_for(lambda: "cause=cpu-fallback" in t.journal(c, "localaid.service"), timeout=30, interval=0.1)
            detect = time.monotonic() - t0
            c.write("/run/fake-ollama/faults.json", "{}")
            wait_for(lambda: t.on_gpu(c), timeout=90, interval=0.1)
            return detect, time.monotonic() - t0
        if name == "resume":
            c.write("/run/fake-kmod/heal-on-uvm-load", "")
            c.write("/run/fake-ollama/faults.json", '{"cpu": true}')
            t0 = time.monotonic()
            c.run([t.SLEEP_HOOK, "post", "suspend"])
            wait_for(lambda: "cause=resume" in t.journal(c, "localaid.service"), timeout=30, interval=0.1)
            detect = time.monotonic() - t0
            wait_for(lambda: "GPU recovered" in t.journal(c, "localaid.service"), timeout=120, interval=0.1)
            return detect, time.monotonic() - t0
        xid = 48 if name == "xid-48" else 79
        if xid == 48:
            c.write("/run/fake-kmod/heal-on-uvm-load", "")
        t0 = time.monotonic()
        t.nvml_update(c, xids=[xid], lost=True)
        wait_for(lambda: "start-job gpu-recover" in t.journal(c, "localaid.service"), timeout=30, interval=0.1)
        detect = time.monotonic() - t0
        if xid == 48:
            wait_for(lambda: "GPU recovered" in t.journal(c, "localaid.service"), timeout=120, interval=0.1)
        else:
            wait_for(lambda: "reboot required" in t.status(c), timeout=120, interval=0.1)
        return detect, time.monotonic() - t0
    finally:
        c.stop()


def main() -> int:
    global LIB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--rootfs", type=Path)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    deb, rootfs = deb_and_rootfs(args.deb, args.rootfs)
    LIB = support.build(tempfile.mkdtemp(prefix="bench-nvml."))

    def boot(install=True, **kw):
        return conftest.boot(rootfs, deb, install=install, **kw)

    names = args.only or ["boot-race", "cpu-fallback", "xid-48", "xid-79-lost", "resume"]
    print(f"{'scenario':<14} {'detect median':>14} {'detect max':>11} {'healed median':>14} {'healed max':>11}  "
          f"(runs: {args.runs})")
    for name in names:
        runs = [scenario(name, boot) for _ in range(args.runs)]
        d, h = [r[0] for r in runs], [r[1] for r in runs]
        end = "verdict" if name == "xid-79-lost" else ""
        print(f"{name:<14} {statistics.median(d):>12.1f} s {max(d):>9.1f} s {statistics.median(h):>12.1f} s "
              f"{max(h):>9.1f} s  {end}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
