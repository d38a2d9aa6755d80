#!/usr/bin/python3
"""Time to detect and to recover from each fault, localaid against systemd alone.

    sudo bench/recovery.py [--runs 5] [--deb out/localaid_*.deb]

Boots the Debian 12 container, installs the .deb, puts stand-in services behind the ollama.service
and open-webui.service names (HTTP servers answering the probe paths, with the Restart= settings
of the real units), and injects each fault --runs times:
  hang   SIGSTOP to the main process (alive, not answering: what systemd never notices)
  crash  SIGKILL to the main process (systemd's own Restart= repairs it)
A driver inside the container injects the fault, polls the service every 20 ms, and reads the
time of localaid's action from the journal. Prints median and worst per fault, beside the same
fault with localaid stopped (systemd alone) and the published anchors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import deb_and_rootfs, install_with_standins, print_table
from harness import Container

# Restart settings as in the real units: install.sh writes RestartSec=3 for ollama.service;
# localaid's open-webui.service restarts after 2 s.
STANDINS = {
    "ollama": (11434, "/srv/ollama", 3),
    "open-webui": (3000, "/srv/webui", 2),
}
# Default probes; a short start grace for the stand-ins; a budget that never runs out here.
CONFIG = ('ollama: {install_script: /nonexistent/install.sh}\ngpu: {devices: {mode: "off"}}\n'
          "health: {start_grace: {ollama: 2s, webui: 2s}, restart_limit: {count: 100, window: 10s}}\n")

DRIVER = r'''
import json, subprocess, sys, time, urllib.request
name, port, path, fault, runs, localaid_on, give_up = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    int(sys.argv[5]), sys.argv[6] == "1", float(sys.argv[7])
unit = name + ".service"
def up():
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=0.2).status == 200
    except Exception:
        return False
def main_pid():
    return subprocess.run(["systemctl", "show", "-P", "MainPID", unit], capture_output=True, text=True).stdout.strip()
def action_time(since):
    out = subprocess.run(["journalctl", "-u", "localaid", "-o", "json", "--since", f"@{since:.3f}", "--no-pager"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        e = json.loads(line)
        msg = e.get("MESSAGE", "")
        wanted = f"kill-restart {unit}" if fault == "hang" else f"{name}: ok -> restarting"
        if isinstance(msg, str) and wanted in msg:
            return int(e["__REALTIME_TIMESTAMP"]) / 1e6
    return None
results = []
for i in range(runs):
    deadline = time.time() + 60
    while not up() and time.time() < deadline:
        time.sleep(0.1)
    # Space the faults beyond the 10 s restart window: each run is then a first fault. Faults
    # repeated within the window back off exponentially by design (tests/unit/test_policy.py).
    time.sleep(11 if localaid_on else 1.5)
    pid = main_pid()
    signal = {"hang": "SIGSTOP", "crash": "SIGKILL"}[fault]
    t0 = time.time()
    subprocess.run(["systemctl", "kill", "--kill-who=main", "-s", signal, unit], check=True)
    healthy = None
    while time.time() - t0 < give_up:
        if main_pid() not in (pid, "0") and up():
            healthy = time.time() - t0
            break
        time.sleep(0.02)
    detect = action_time(t0 - 0.5) if localaid_on else None
    results.append({"detect": None if detect is None else max(0.0, detect - t0), "healthy": healthy})
    if healthy is None:  # systemd alone never repairs a hang: end it for the next run
        subprocess.run(["systemctl", "restart", unit], check=True)
print(json.dumps(results))
'''

ANCHORS = {
    "hang": "systemd: never; Docker HEALTHCHECK: 90-180 s, no restart; Kubernetes liveness: ~30 s",
    "crash": "systemd alone (the unit's Restart=), Kubernetes: restart + back-off",
}


def setup(c: Container) -> None:
    c.sh("mkdir -p /srv/ollama /srv/webui && echo ok > /srv/webui/health && echo ok > /srv/webui/ready")
    for name, (port, root, restart_sec) in STANDINS.items():
        c.write(f"/etc/systemd/system/{name}.service",
                f"[Service]\nExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 {port} --directory {root}\n"
                f"Restart=always\nRestartSec={restart_sec}\n")
    c.systemctl("daemon-reload")
    c.systemctl("start", *(f"{n}.service" for n in STANDINS))


def fmt(xs) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "never"
    s = f"{statistics.median(vals):.1f} / {max(vals):.1f} s"
    return s if len(vals) == len(xs) else s + f" ({len(xs) - len(vals)} never)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--rootfs", type=Path)
    args = ap.parse_args()
    deb, rootfs = deb_and_rootfs(args.deb, args.rootfs)
    rows = []
    with Container(rootfs, binds=[(str(deb), f"/mnt/{deb.name}", True)], name="bench-recovery",
                   private_network=True) as c:
        setup(c)
        install_with_standins(c, deb, CONFIG, DRIVER)
        for name, (port, _, _) in STANDINS.items():
            path = "/" if name == "ollama" else "/health"
            for fault in ("hang", "crash"):
                measured = {}
                for on in (True, False):
                    r = c.systemctl("start" if on else "stop", "localaid", check=False)
                    if r.returncode:
                        print(c.journal("localaid", lines=60), file=sys.stderr)
                        raise SystemExit(f"localaid did not {'start' if on else 'stop'}: {r.stderr}")
                    give_up = 30.0 if on else (20.0 if fault == "hang" else 30.0)
                    out = c.run(["python3", "/root/driver.py", name, str(port), path, fault, str(args.runs),
                                 "1" if on else "0", str(give_up)], timeout=args.runs * 90).stdout
                    measured[on] = json.loads(out)
                rows.append([f"{name} {fault}", fmt([r["detect"] for r in measured[True]]),
                             fmt([r["healthy"] for r in measured[True]]),
                             fmt([r["healthy"] for r in measured[False]]) +
                             (" (gave up at 20 s)" if fault == "hang" else ""), ANCHORS[fault]])
        c.systemctl("start", "localaid")
    header = ["fault (x%d)" % args.runs, "localaid detects (median / worst)", "localaid healthy again",
              "systemd alone healthy again", "anchors"]
    print_table("recovery, Debian 12 container, stand-in services, default probes (1 s interval, 0.5 s timeout, "
                "3 failures); faults spaced beyond the restart window", header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
