#!/usr/bin/python3
"""RSS growth of the supervision loop over many cycles (issue 7: < 1 MB over 10,000 cycles).

    sudo bench/cycle_growth.py [--cycles 10000] [--deb out/localaid_*.deb]

Installs the .deb in the Debian 12 container with stand-in services answering every probe, stops
localaid.service, then runs the real Supervisor.cycle() (real systemd over D-Bus, real HTTP
probes, real state-file writes) back to back and prints RSS after 500 cycles and at the end,
with the cycle time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import deb_and_rootfs
from harness import Container, wait_for

CONFIG = "ollama:\n  install_script: /nonexistent/install.sh\n"
STANDINS = {"ollama.service": 11434, "open-webui.service": 3000}
DRIVER = r"""
import sys, time
from localaid import config
from localaid.supervisor import Supervisor
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
n = int(sys.argv[1])
s = Supervisor(config.load("/etc/localaid/localaid.yaml", None), "/etc/localaid/localaid.yaml", None)
marks, times = {}, []
for i in range(1, n + 1):
    t = time.perf_counter(); s.cycle(); times.append(time.perf_counter() - t)
    if i in (500, n):
        marks[i] = rss()
times.sort()
print(marks[500], marks[n], times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000,
      s.history.services["ollama"].state, s.history.services["open-webui"].state)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--deb", type=Path)
    args = ap.parse_args()
    deb, rootfs = deb_and_rootfs(args.deb)
    with Container(rootfs, binds=[(str(deb), f"/mnt/{deb.name}", True)], name="bench-cycles",
                   private_network=True) as c:
        c.sh("mkdir -p /srv/s && echo ok > /srv/s/health && echo ok > /srv/s/ready")
        for unit, port in STANDINS.items():
            c.write(f"/etc/systemd/system/{unit}", "[Service]\nExecStart=/usr/bin/python3 -m http.server "
                    f"--bind 127.0.0.1 {port} --directory /srv/s\nRestart=always\n")
        c.systemctl("daemon-reload")
        c.systemctl("start", *STANDINS)
        c.write("/etc/localaid/localaid.yaml", CONFIG)
        c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
              timeout=600)
        wait_for(lambda: "open-webui ok" in c.unit_property("localaid", "StatusText"), timeout=60)
        c.systemctl("stop", "localaid")
        # The last line is the driver's; the ones before are the supervisor's own journal lines.
        out = c.run(["python3", "-c", DRIVER, str(args.cycles)], timeout=7200).stdout.splitlines()[-1].split()
    rss500, rss_n, med, p99 = (float(x) for x in out[:4])
    print(f"supervision cycles back to back, Debian 12 container, stand-ins healthy "
          f"(ollama {out[4]}, open-webui {out[5]})")
    print(f"{'measure':<34} | {'value':<24} | goal")
    print(f"{'-' * 34}-+-{'-' * 24}-+------")
    print(f"{'RSS after 500 cycles':<34} | {rss500:.1f} MB{'':<17} | -")
    print(f"{'RSS after %d cycles' % args.cycles:<34} | {rss_n:.1f} MB{'':<17} | -")
    print(f"{'growth':<34} | {rss_n - rss500:+.2f} MB{'':<16} | < 1 MB")
    print(f"{'cycle time median / p99':<34} | {med:.2f} / {p99:.2f} ms{'':<8} | -")
    return 0


if __name__ == "__main__":
    sys.exit(main())
