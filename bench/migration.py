#!/usr/bin/python3
"""A long, silent Open WebUI start under localaid's shipped health settings: left alone when it
works, repaired when it idles.

    sudo bench/migration.py [--busy 360] [--idle 900] [--deb out/localaid_*.deb]

Open WebUI runs its database migrations before it opens its port: for minutes on a large
database, with nothing to probe. localaid waits health.start_grace.webui (3 min) after a start;
past it, a start whose cgroup keeps using CPU is "working" and is waited for up to
health.busy_start_limit (30 min), while one that idles without a port is repaired like a hung
service. This benchmark runs both on the SHIPPED defaults (no health.* key is set: interval 1 s,
timeout 0.5 s, failures 3, start grace 3 min, busy start limit 30 min).

Boots the Debian 12 container (private network), runs the fake Ollama (tests/fakes/ollama) as
ollama.service, installs the .deb with the fake Open WebUI 0.12.4 from its wheelhouse
(tests/fakes/open_webui, localaid's real uv path), waits for "open-webui ok", then for each
scenario writes the fake's fault file (/var/lib/open-webui/fake-faults, read at start), restarts
open-webui.service, and removes the file 20 s later (the started process has read it; a process
localaid starts afterwards serves at once):

  busy   busy-bind=--busy   works (half a core) for --busy seconds, no port: a migration.
                            Expected: never restarted (same MainPID until it serves, no
                            restart line in localaid's journal, NRestarts unchanged); STATUS
                            "starting (working for …, port not open yet (migrating?))" after
                            the grace.
  idle   slow-bind=--idle   sleeps --idle seconds, no port, no CPU. Expected: kill-restart by
                            localaid about grace + failures × interval (≈ 183 s) after the start.

The host samples localaid's STATUS (StatusText), open-webui.service's MainPID/NRestarts and
/ready once a second; times are from the unit's ActiveEnterTimestampMonotonic, and localaid's
restart from its journal line ("kill-restart open-webui.service: ok"), all on CLOCK_MONOTONIC.
Prints a table (and each scenario's STATUS timeline); takes about 12 minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from common import OLLAMA_UNIT, REPO, deb_and_rootfs, log, print_table, wheelhouse
from harness import Container, wait_for

PORT = 3000  # the container has its own network: the default port is free
FAULTS = "/var/lib/open-webui/fake-faults"

# Nothing under health: the shipped defaults are the subject.
CONFIG = f"""\
ollama:
  install_script: /nonexistent/install.sh
gpu:
  devices:
    mode: "off"
webui:
  version: "0.12.4"
  listen: 127.0.0.1:{PORT}
  find_links: [/opt/wheelhouse]
"""


# One sample: localaid's STATUS, the unit's state, /ready (one nsenter a second).
SAMPLE = f"""\
systemctl show -P StatusText localaid.service
systemctl show -p MainPID -p NRestarts -p ActiveEnterTimestampMonotonic -p ActiveState open-webui.service \
  | tr '\\n' ' '; echo
curl -s -o /dev/null -m 0.8 -w '%{{http_code}}\\n' http://127.0.0.1:{PORT}/ready || echo 000
"""

ACTIONS = ("kill-restart open-webui.service", "restart open-webui.service", "start open-webui.service")




def setup(c: Container, deb: Path) -> None:
    """Fake Ollama answering on 11434, then the .deb with the fake Open WebUI, to "open-webui ok"."""
    c.write("/etc/pip.conf", "[global]\nno-index = true\n")  # local wheels only (as tests/integration)
    c.sh("mkdir -p /run/fake-ollama /var/lib/fake-ollama/models")
    c.write("/run/fake-ollama/faults.json", "{}")
    c.write("/etc/systemd/system/ollama.service", OLLAMA_UNIT)
    c.systemctl("daemon-reload")
    c.systemctl("start", "ollama.service")
    wait_for(lambda: c.run(["curl", "-sf", "-m", "1", "http://127.0.0.1:11434/api/version"],
                           check=False).returncode == 0, timeout=30, message="the fake Ollama answering")
    c.write("/etc/localaid/localaid.yaml", CONFIG)
    t0 = time.monotonic()
    c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
          timeout=600)
    try:
        wait_for(lambda: "open-webui ok" in c.unit_property("localaid", "StatusText"), timeout=600, interval=1,
                 message="open-webui ok in localaid's STATUS")
    except TimeoutError:
        print(c.journal("localaid-webui-setup.service", lines=60), file=sys.stderr)
        print(c.journal("localaid", lines=60), file=sys.stderr)
        raise
    log(f"installed; open-webui ok {time.monotonic() - t0:.0f} s after apt-get install began")


def sample(c: Container) -> dict:
    lines = c.sh(SAMPLE, check=False, timeout=20).stdout.splitlines() + ["", "", ""]
    unit = dict(kv.split("=", 1) for kv in lines[1].split() if "=" in kv)
    status = lines[0]
    frag = next((p for p in status.split(" · ") if p.startswith("open-webui")), "")
    num = lambda k: int(unit[k]) if unit.get(k, "").isdigit() else 0  # noqa: E731
    return {"t": time.monotonic(), "status": status, "webui": frag, "pid": unit.get("MainPID", ""),
            "nrestarts": num("NRestarts"), "enter": num("ActiveEnterTimestampMonotonic") / 1e6,
            "state": unit.get("ActiveState", ""), "ready": lines[2].strip() == "200"}


def journal_entries(c: Container) -> list[tuple[float, str]]:
    """localaid's journal lines as (CLOCK_MONOTONIC seconds, message)."""
    out = c.run(["journalctl", "-u", "localaid", "-o", "json", "--no-pager", "-n", "3000"], check=False).stdout
    entries = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e.get("MESSAGE"), str):
            entries.append((int(e.get("__MONOTONIC_TIMESTAMP", 0)) / 1e6, e["MESSAGE"]))
    return entries


def actions_since(c: Container, since_mono: float) -> list[tuple[float, str]]:
    """localaid's restart/start lines for open-webui.service at or after since_mono (CLOCK_MONOTONIC)."""
    return [(mono, msg) for mono, msg in journal_entries(c) if mono >= since_mono and msg.startswith(ACTIONS)]


def journal_around(c: Container, mono: float, before: float = 8.0, after: float = 4.0) -> str:
    keep = [f"  [{t - mono:+6.1f} s] {msg}" for t, msg in journal_entries(c) if mono - before <= t <= mono + after]
    return "\n".join(keep)


def shape(frag: str) -> str:
    """A STATUS fragment with its numbers blanked: the timeline keeps one line per kind."""
    return re.sub(r"\d+(\.\d+)?", "#", frag)


def scenario(c: Container, fault: str, give_up: float, stop_at_restart: bool) -> dict:
    """Start open-webui with `fault`; sample until it serves (busy) or until localaid restarts it
    and the new process serves (idle), or give_up seconds after the start."""
    before = sample(c)
    c.write(FAULTS, fault + "\n", mode=0o600, owner="open-webui:open-webui")
    c.systemctl("restart", "open-webui.service")
    first = sample(c)
    start, pid0, n0 = first["enter"], first["pid"], before["nrestarts"]
    log(f"{fault}: open-webui.service started, MainPID {pid0}")
    cleared = False
    timeline: list[tuple[float, str]] = []  # (seconds after start, fragment) when its kind changes
    samples = [first]
    served_at = restart_at = None
    pids = [pid0]
    last_log = 0.0
    while True:
        s = sample(c)
        samples.append(s)
        el = s["t"] - start
        if not cleared and el >= 20:
            c.run(["rm", "-f", FAULTS])
            cleared = True
        if not timeline or shape(timeline[-1][1]) != shape(s["webui"]):
            timeline.append((el, s["webui"]))
        if s["pid"] not in ("", "0") and s["pid"] != pids[-1]:
            pids.append(s["pid"])
        if restart_at is None:
            acts = actions_since(c, start) if (s["pid"] != pid0 or s["state"] != "active") else []
            if acts:
                restart_at = acts[0][0] - start
                log(f"{fault}: localaid: {acts[0][1]} at {restart_at:.1f} s")
        if s["ready"] and served_at is None:
            served_at = el
            log(f"{fault}: serving (/ready 200) at {el:.1f} s, MainPID {s['pid']}")
        if served_at is not None and (restart_at is not None or not stop_at_restart):
            break
        if el > give_up:
            log(f"{fault}: gave up at {el:.0f} s")
            break
        if el - last_log >= 30:
            log(f"{fault}: {el:5.0f} s  MainPID {s['pid']}  {s['webui']}")
            last_log = el
        time.sleep(max(0.0, 1.0 - (time.monotonic() - s["t"])))
    c.run(["rm", "-f", FAULTS])
    # Whatever localaid did to the unit in all this time (a restart missed by the sampling too).
    acts = actions_since(c, start)
    if restart_at is None and acts:
        restart_at = acts[0][0] - start
    try:
        ok = wait_for(lambda: (t := c.unit_property("localaid", "StatusText")) and "open-webui ok" in t and t,
                      timeout=120, interval=1, message="open-webui ok again")
    except TimeoutError:
        ok = c.unit_property("localaid", "StatusText")
    after = sample(c)
    return {"fault": fault, "start": start, "pid0": pid0, "pids": pids, "served_at": served_at,
            "restart_at": restart_at, "actions": [(t - start, m) for t, m in acts],
            "nrestarts": after["nrestarts"] - n0, "timeline": timeline, "ok_status": ok,
            "samples": samples, "journal": journal_around(c, acts[0][0]) if acts else ""}


def status_at(r: dict, el: float) -> str:
    """The open-webui fragment of the last sample at or before `el` seconds after the start."""
    frag = ""
    for s in r["samples"]:
        if s["t"] - r["start"] <= el:
            frag = s["webui"]
    return frag


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=float, default=360.0,
                    help="seconds the busy start works before it binds (busy-bind=N; default 360)")
    ap.add_argument("--idle", type=float, default=900.0,
                    help="seconds the idle start sleeps before it binds (slow-bind=N; default 900)")
    ap.add_argument("--deb", type=Path, help="localaid .deb (default: a fresh tools/build-deb)")
    ap.add_argument("--rootfs", type=Path, help="root file system (default: the cached tools/build-rootfs)")
    args = ap.parse_args()
    deb, rootfs = deb_and_rootfs(args.deb, args.rootfs)
    wh = wheelhouse()
    with Container(rootfs, name="bench-migration", private_network=True,
                   binds=[(str(deb), f"/mnt/{deb.name}", True), (str(wh), "/opt/wheelhouse", True),
                          (str(REPO / "tests/fakes/ollama"), "/opt/fakes/ollama", True)]) as c:
        setup(c, deb)
        health = c.run(["python3", "-c", "from localaid.config import load; h = load('/etc/localaid/localaid.yaml', "
                        "'/etc/localaid/conf.d').health; print(h)"], check=False)
        log(f"effective health settings: {(health.stdout or health.stderr).strip()}")
        busy = scenario(c, f"busy-bind={args.busy:g}", give_up=args.busy + 240, stop_at_restart=False)
        idle = scenario(c, f"slow-bind={args.idle:g}", give_up=min(args.idle, 600) + 60, stop_at_restart=True)

    rows = []
    for label, r in (("busy: migrating, silent, CPU", busy), ("idle: silent, no CPU", idle)):
        restarted = r["restart_at"] is not None or len(r["pids"]) > 1 or r["nrestarts"] > 0
        how = (f"yes, by localaid at {r['restart_at']:.1f} s" if r["restart_at"] is not None else
               "yes (MainPID changed)" if restarted else "no")
        pids = " → ".join(r["pids"])
        if r["restart_at"] is not None:
            when = f"restart {r['restart_at']:.1f} s; serving {r['served_at']:.1f} s" if r["served_at"] is not None \
                else f"restart {r['restart_at']:.1f} s; never served"
            seen = status_at(r, r["restart_at"] - 0.01) + " → " + status_at(r, r["restart_at"] + 1.5)
        else:
            when = f"serving {r['served_at']:.1f} s" if r["served_at"] is not None else "never served"
            seen = next((f for _, f in r["timeline"] if "migrating?" in f), "(no 'migrating?' seen)")
            first = next((t for t, f in r["timeline"] if "migrating?" in f), None)
            if first is not None:
                seen += f" (from {first:.0f} s)"
        rows.append([label, r["fault"], f"{how} (MainPID {pids})", when, seen, str(r["nrestarts"])])
    print_table("\nOpen WebUI's long silent start, Debian 12 container, localaid's shipped health defaults "
                "(start grace 3 min, busy start limit 30 min, 1 s interval, 0.5 s timeout, 3 failures); "
                "times from the unit's start",
                ["scenario", "fault", "restarted?", "time to restart / to serving", "STATUS seen (open-webui)",
                 "NRestarts"], rows)
    for label, r in (("busy", busy), ("idle", idle)):
        print(f"\n{label} ({r['fault']}): STATUS timeline (open-webui fragment, when its kind changed)")
        for t, f in r["timeline"]:
            print(f"  {t:7.1f} s  {f}")
        print(f"  then: {r['ok_status']}")
        for t, m in r["actions"]:
            print(f"  localaid journal {t:7.1f} s: {m}")
        if r["journal"]:
            print(f"  localaid's journal around its first action:\n{r['journal']}")
    ok = busy["restart_at"] is None and len(busy["pids"]) == 1 and busy["nrestarts"] == 0 \
        and busy["served_at"] is not None and idle["restart_at"] is not None
    print("\nverdict: " + ("as expected" if ok else "NOT as expected (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
