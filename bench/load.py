#!/usr/bin/python3
"""Zero false restarts: localaid at its default probes while the services are kept busy for minutes.

    sudo bench/load.py [--seconds 60] [--clients 16] [--deb out/localaid_*.deb]

Boots the Debian 12 container, installs the .deb with the default health settings (1 s interval,
0.5 s timeout, 3 failures, default start grace), runs the fake Ollama (tests/fakes/ollama) as
ollama.service and a threaded HTTP stand-in as open-webui.service, then runs each phase for
--seconds while --clients concurrent clients keep both services busy:

  slow answers    every Ollama answer delayed 0.35 s (70 % of the probe timeout)
  loading models  every generate request loads its model (2 s), keep_alive 0: always loading
  CPU saturated   two busy loops per core beside the clients (a model on the CPU does this)
  start-up        open-webui restarted every 25 s with a 20 s silent start (its migrations)

A driver inside the container runs the clients and samples /run/localaid/status.json every
0.25 s. Prints, per phase: client requests served, the worst probe latency localaid saw, how
often a service was seen anything but ok, and the restarts localaid made (all of them false:
nothing was hung). systemd's NRestarts is shown as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import OLLAMA_UNIT, REPO, deb_and_rootfs, install_with_standins, print_table
from harness import Container, standin_unit, wait_for

CONFIG = 'ollama: {install_script: /nonexistent/install.sh}\ngpu: {devices: {mode: "off"}}\n'  # else defaults


SLOW_START = ("[Service]\nExecStart=\nExecStart=/bin/sh -c 'sleep 20; exec /usr/bin/python3 -m http.server "
              "--bind 127.0.0.1 3000 --directory /srv/webui'\n")

DRIVER = r'''
import json, os, subprocess, sys, threading, time, urllib.request
phase, seconds, clients = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
stop = time.time() + seconds
served, failed, lock = [0], [0], threading.Lock()

def hit(url, data=None):
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        urllib.request.urlopen(req, timeout=30).read()
        ok = True
    except Exception:
        ok = False
    with lock:
        (served if ok else failed)[0] += 1

def client(i):
    gen = json.dumps({"model": "tiny:latest", "prompt": "hi", "stream": False, "keep_alive": 0}).encode()
    while time.time() < stop:
        if i % 2:
            hit("http://127.0.0.1:11434/api/generate", gen)
        else:
            hit("http://127.0.0.1:11434/api/tags")
            hit("http://127.0.0.1:3000/health")

hogs = []
if phase == "cpu":
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * os.cpu_count())]
threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
[t.start() for t in threads]
worst, not_ok, samples, last_restart = {}, {}, 0, time.time()
while time.time() < stop:
    if phase == "startup" and time.time() - last_restart >= 25:
        subprocess.run(["systemctl", "restart", "--no-block", "open-webui.service"], check=True)
        last_restart = time.time()
    try:
        doc = json.load(open("/run/localaid/status.json"))
    except (OSError, ValueError):
        time.sleep(0.05)
        continue
    samples += 1
    for s in doc["services"]:
        if s.get("probe_latency") is not None:
            worst[s["name"]] = max(worst.get(s["name"], 0.0), s["probe_latency"])
        if s["state"] != "ok":
            not_ok.setdefault(s["name"], {}).setdefault(s["state"], 0)
            not_ok[s["name"]][s["state"]] += 1
    time.sleep(0.25)
[t.join(timeout=35) for t in threads]
for h in hogs:
    h.kill()
print(json.dumps({"served": served[0], "failed": failed[0], "worst": worst, "not_ok": not_ok, "samples": samples}))
'''

PHASES = [
    ("slow answers", "slow", {"slow": 0.35}),
    ("loading models", "load", {"slow_load": 2}),
    ("CPU saturated", "cpu", {}),
    ("start-up", "startup", {}),
]


def setup(c: Container) -> None:
    c.sh("mkdir -p /srv/webui /run/fake-ollama && echo ok > /srv/webui/health && echo ok > /srv/webui/ready")
    c.write("/run/fake-ollama/faults.json", "{}")
    c.write("/etc/systemd/system/ollama.service", OLLAMA_UNIT)
    c.write("/etc/systemd/system/open-webui.service", standin_unit(3000, "/srv/webui", extra="RestartSec=2\n"))
    c.systemctl("daemon-reload")
    c.systemctl("start", "ollama.service", "open-webui.service")
    wait_for(lambda: c.run(["python3", "-c", PULL], check=False).returncode == 0, timeout=30)


PULL = """import json, urllib.request
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:11434/api/pull", method="POST",
                       data=json.dumps({"model": "tiny:latest", "stream": False}).encode()), timeout=10).read()"""


def restarts(c: Container, since: float) -> int:
    out = c.run(["journalctl", "-u", "localaid", "--no-pager", "-o", "cat", "--since", f"@{since:.3f}"]).stdout
    return sum(1 for ln in out.splitlines() if ln.startswith(("kill-restart ", "restart ", "start ")))


def n_restarts(c: Container) -> int:
    return sum(int(c.unit_property(u, "NRestarts") or 0) for u in ("ollama.service", "open-webui.service"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--rootfs", type=Path)
    args = ap.parse_args()
    deb, rootfs = deb_and_rootfs(args.deb, args.rootfs)
    rows = []
    with Container(rootfs, name="bench-load", private_network=True,
                   binds=[(str(deb), f"/mnt/{deb.name}", True),
                          (str(REPO / "tests/fakes/ollama"), "/opt/fakes/ollama", True)]) as c:
        setup(c)
        install_with_standins(c, deb, CONFIG, DRIVER)
        for title, phase, faults in PHASES:
            c.write("/run/fake-ollama/faults.json", json.dumps(faults))
            if phase == "startup":
                c.write("/etc/systemd/system/open-webui.service.d/slow-start.conf", SLOW_START)
                c.systemctl("daemon-reload")
            t0, n0 = time.time(), n_restarts(c)
            r = json.loads(c.run(["python3", "/root/driver.py", phase, str(args.seconds), str(args.clients)],
                                 timeout=args.seconds + 120).stdout)
            acted = restarts(c, t0)
            rows.append([title, f"{args.seconds:.0f} s", f"{r['served']} ok / {r['failed']} failed",
                         " / ".join(f"{r['worst'].get(n, 0) * 1000:.0f} ms" for n in ("ollama", "open-webui")),
                         ", ".join(f"{n} {st} x{k}" for n, d in r["not_ok"].items() for st, k in d.items()) or "never",
                         str(acted), str(n_restarts(c) - n0)])
            c.write("/run/fake-ollama/faults.json", "{}")
            if phase == "startup":
                c.run(["rm", "-rf", "/etc/systemd/system/open-webui.service.d"])
                c.systemctl("daemon-reload")
                c.systemctl("restart", "open-webui.service")
    header = ["phase", "length", "client requests", "worst probe (ollama / webui)", "seen not ok (samples of 0.25 s)",
              "localaid restarts", "systemd NRestarts"]
    print_table(f"load, Debian 12 container, default probes (1 s interval, 0.5 s timeout, 3 failures), "
                f"{args.clients} concurrent clients; every restart here would be a false one", header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
