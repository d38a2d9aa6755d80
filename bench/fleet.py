#!/usr/bin/python3
"""A GPU node dropped off the network: how long Open WebUI keeps sending chats to it, localaid's
failover against Open WebUI alone.

    sudo bench/fleet.py [--runs 5] [--down 30] [--rate 5] [--deb out/localaid_*.deb]

The fleet of tests/integration/test_fleet.py (Fleet): three booted Debian 12 containers on a
bridge in a network namespace of their own (10.213.0.0/24, no way out): the UI host (localaid,
ollama.enabled false, webui.ollama_urls [node1, node2], the fake Open WebUI 0.12 that sends each
chat to a random enabled connection with its 300 s client timeout) and two GPU nodes (localaid,
the fake Ollama on loopback, served to the UI host by nginx over TLS with the node's token:
ollama.expose after `localaid node join`, allow_from the UI host).

Each run partitions node2 (its bridge port down) for --down seconds, then brings it back. A
driver inside the UI host sends chats through Open WebUI's API at a steady --rate per second
(open loop: each chat in its own thread, a 15 s client timeout) and polls GET /ollama/config
every 0.1 s; all times are CLOCK_MONOTONIC, the host's and the container's alike.

  localaid     as installed. Before each run the UI host's localaid is restarted (both nodes
               in use): its node history is in memory, and a third outage within 10 minutes
               would otherwise be held out 15 s or more once it answers (flapping).
  Open WebUI   `systemctl stop localaid` on the UI host: nothing takes node2 out.

Measured: time from the partition until node2's connection is disabled ("out of use"), time
from the link's return until it is enabled again ("back"), and the share of the chats sent while
the link was down that failed (an error from Open WebUI or no answer within 15 s). Prints median
and worst per mode, then every run. About 1 minute per run plus 2 for the set-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from common import REPO, deb_and_rootfs, log, print_table, wheelhouse
from harness import wait_for

import test_fleet as tf  # noqa: E402 - tests/integration is on sys.path (common)
from test_nodes import in_use, status, token  # noqa: E402

WARM = 3.0  # seconds of chats before the partition


def one_run(f: tf.Fleet, tok: str, down: float, rate: float, timeout: float, after: float) -> dict:
    """Partition node2 for `down` seconds while the driver runs; the run's figures."""
    ui = f["ui"]
    seconds = WARM + down + after
    result: dict = {}

    def drive():
        r = ui.run(["python3", "-c", tf.DRIVER, tok, str(seconds), str(rate), str(timeout)], check=False,
                   timeout=seconds + timeout + 60)
        result["events"] = json.loads(r.stdout) if r.returncode == 0 else []
        result["error"] = r.stderr[-2000:] if r.returncode else ""

    th = threading.Thread(target=drive)
    t_start = time.monotonic()
    th.start()
    time.sleep(max(0.0, t_start + WARM - time.monotonic()))
    t_down = time.monotonic()
    f.link("node2", False)
    try:
        time.sleep(max(0.0, t_down + down - time.monotonic()))
    finally:
        t_up = time.monotonic()
        f.link("node2", True)
    th.join()
    if not result.get("events"):
        raise RuntimeError(f"the driver failed: {result.get('error')}")
    ev = result["events"]
    uses = sorted((e[1], e[2]) for e in ev if e[0] == "use")
    out = next((t - t_down for t, u in uses if t >= t_down and not u[1]), None)
    back = next((t - t_up for t, u in uses if t >= t_up and u == [True, True]), None)
    window = [e for e in ev if e[0] == "chat" and t_down <= e[1] < t_up]
    failed = [e for e in window if str(e[3]).startswith("failed")]
    later = [e for e in ev if e[0] == "chat" and e[1] >= t_up]
    reasons: dict[str, int] = {}
    for e in failed:
        why = str(e[3])
        why = "no answer in 15 s (client timeout)" if "timed out" in why else why.split("(", 1)[0].strip() + \
            (" (" + why.split(": ")[-1].rstrip(")") + ")" if "(" in why else "")
        reasons[why] = reasons.get(why, 0) + 1
    return {"out": out, "back": back, "sent": len(window), "failed": len(failed),
            "share": len(failed) / len(window) if window else 0.0,
            "failed_after": sum(1 for e in later if str(e[3]).startswith("failed")), "sent_after": len(later),
            "worst_wait": max((e[2] - e[1] for e in failed), default=0.0), "reasons": reasons}


def fmt_s(v) -> str:
    return "never" if v is None else f"{v:.1f} s"


def med_worst(values, fmt) -> str:
    if any(v is None for v in values):
        return "never" if all(v is None for v in values) else f"{fmt(statistics.median([v for v in values if v is not None]))} / never"
    return f"{fmt(statistics.median(values))} / {fmt(max(values))}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="partitions per mode (default 5)")
    ap.add_argument("--down", type=float, default=30.0, help="seconds node2's link is down per run (default 30)")
    ap.add_argument("--rate", type=float, default=5.0, help="chats per second, sent continuously (default 5)")
    ap.add_argument("--timeout", type=float, default=15.0, help="each chat's client timeout, seconds (default 15)")
    ap.add_argument("--after", type=float, default=15.0,
                    help="seconds the driver keeps sending after the link returns (default 15)")
    ap.add_argument("--modes", default="localaid,webui-alone",
                    help="comma-separated: localaid, webui-alone (default both)")
    ap.add_argument("--deb", type=Path, help="localaid .deb (default: a fresh tools/build-deb)")
    ap.add_argument("--rootfs", type=Path, help="root file system (default: the cached tools/build-rootfs)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"localaid", "webui-alone"}:
        ap.error(f"unknown mode in {args.modes!r}")
    deb, rootfs = deb_and_rootfs(args.deb, args.rootfs)
    wh = wheelhouse()
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    t0 = time.monotonic()
    with tf.Fleet(rootfs, deb, wh, label="bench-fleet", log=log) as f:
        log(f"fleet ready in {f.timings['ready']:.0f} s (netns {f.netns})")
        ui = f["ui"]
        tok = token(ui)
        for mode in modes:
            for i in range(args.runs):
                if mode == "localaid":
                    # only with both in use: a restarted localaid does not know which connections
                    # it switched off, and leaves switched-off ones to the admin
                    tf.both_in_use(f, tok)
                    ui.systemctl("restart", "localaid")  # fresh node history (see the docstring)
                    tf.both_in_use(f, tok)
                else:
                    if ui.is_active("localaid") == "active":
                        tf.both_in_use(f, tok)
                        ui.systemctl("stop", "localaid")
                    wait_for(lambda: in_use(ui, tok) == [True, True], timeout=30)
                r = one_run(f, tok, args.down, args.rate, args.timeout, args.after)
                runs[mode].append(r)
                log(f"{mode} run {i + 1}: out {fmt_s(r['out'])}, back {fmt_s(r['back'])}, failed "
                    f"{r['failed']}/{r['sent']} while down, {r['failed_after']}/{r['sent_after']} after; {r['reasons']}")
        log(f"UI host's STATUS at the end: {status(ui)}")
    label = {"localaid": "localaid failover", "webui-alone": "Open WebUI alone (localaid stopped)"}
    rows = []
    for mode in modes:
        rs = runs[mode]
        rows.append([label[mode], str(len(rs)),
                     med_worst([r["out"] for r in rs], lambda v: f"{v:.1f} s"),
                     med_worst([r["back"] for r in rs], lambda v: f"{v:.1f} s") if mode == "localaid" else "-",
                     med_worst([r["share"] for r in rs], lambda v: f"{100 * v:.1f} %"),
                     f"{sum(r['failed'] for r in rs)}/{sum(r['sent'] for r in rs)}",
                     med_worst([r["worst_wait"] for r in rs], lambda v: f"{v:.1f} s")])
    print_table(f"\nnode2 partitioned for {args.down:g} s (bridge port down), chats at {args.rate:g}/s through Open WebUI "
                f"(random enabled connection), {args.timeout:g} s client timeout; median / worst of the runs",
                ["mode", "runs", "out of use after", "back in use after link up", "chats failed while down",
                 "failed/sent (all runs)", "longest failed chat"], rows)
    print("\nevery run:")
    for mode in modes:
        for i, r in enumerate(runs[mode], 1):
            print(f"  {label[mode]} #{i}: out {fmt_s(r['out'])}, back {fmt_s(r['back'])}, failed {r['failed']}/"
                  f"{r['sent']} while down ({100 * r['share']:.1f} %), {r['failed_after']}/{r['sent_after']} after "
                  f"the link returned; {r['reasons'] or 'no failures'}")
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
