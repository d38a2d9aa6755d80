#!/usr/bin/python3
"""The wedged-runner watchdog on the shipped defaults: how soon a wedged runner is repaired, and
that long answers and queued requests are never taken for a wedge.

    sudo bench/runner_watchdog.py [--runs 5] [--deb out/localaid_*.deb] [--rootfs DIR]
    sudo bench/runner_watchdog.py --restart-limit 20      # back-to-back runs (stated in the table)
    sudo bench/runner_watchdog.py --second-model --runs 1   # the wedge in a 2nd loaded model's runner
    sudo bench/runner_watchdog.py --soak [--soak-seconds 600]

One Debian 12 container as tests/integration/test_runner_watchdog.py boots it: the fake Ollama
0.30.12 (a `llama-server` runner child per loaded model, one request at a time) as its install
script leaves it, the .deb installed by apt on the shipped defaults with only the doubles' conf.d
(Ollama installed already, Open WebUI's wheels from a local wheelhouse), the CPU pick warm.

Wedge runs (default): a short answer first, then the canary that follows it (so that each run
starts from the same state), then a streamed generation that works (gen_cpu 0.02 s per token,
5 tokens/s) and wedges after its 3rd token for good (the fake's runner_wedge). The clock starts
at the 3rd token's arrival (the runner's last work, read in the container with the host's
clock) and stops at
  detected  the kill-restart with cause "wedged runner" (its time in status.json recent_actions)
  healthy   `localaid status` healthy with the model warm, and a generate answered.
Budget: health.restart_limit (5 in 10 min) counts these restarts, and a 5th within the window
leaves Ollama "degraded" (not healthy) until the 1st ages out. So, on the shipped defaults, a run
waits before its wedge until its restart will be at most the 4th in the window (runs 1-4 back
to back, run 5 about 10 min after run 1). --restart-limit N writes a conf.d file raising
restart_limit.count instead (quiet and canary_timeout stay as shipped); the table says so.

--second-model: before each run a second model is loaded for 10 min beside the pick (kept for
good), as a user who picks another model in Open WebUI leaves it, and that model's runner wedges.
Ollama lists the loaded models longest keep-alive first, so the canary asks the pick first. A
run not repaired within 120 s of the last work is reported as such (then Ollama is restarted by
hand, outside localaid's budget, for the next run).

Soak (--soak): for --soak-seconds, rounds of one long answer (60-120 s at 4 tokens/s) with 4 more
requests sent at once behind it (10-30 s each; the fake runs one at a time), gaps of 5-25 s
between rounds (a gap over the watchdog's quiet time sends a canary), gen_cpu per round 0.1, 0.02
or 0.005 CPU s per token (a CPU runner scaled down, a GPU runner). Counts localaid's restarts of
Ollama (kill-restart/restart actions, any cause), ollama.service NRestarts and MainPID, canaries
sent and answered, answers complete. Goal: 0 restarts.

The CPUs are shared: figures are wall-clock seconds on this host as it was loaded at the time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import REPO, deb_and_rootfs, log, print_table, wheelhouse
sys.path.insert(0, str(REPO))

from conftest import boot, install_deb  # noqa: E402
from harness import install_fake_ollama, wait_for  # noqa: E402
from test_auto_model import DOUBLES, expected_cpu_pick, healthy, status  # noqa: E402

from localaid.config.keys import HealthConfig  # noqa: E402

SHIPPED = HealthConfig()  # the defaults the shipped localaid.yaml leaves in force

FAULTS = "/run/fake-ollama/faults.json"
QUIET = SHIPPED.runner_quiet
CANARY_TIMEOUT = SHIPPED.runner_canary_timeout
INTERVAL = SHIPPED.interval
LIMIT, WINDOW = SHIPPED.restart_limit, SHIPPED.restart_window
REPAIR_LIMIT = 120.0  # seconds after the last work: a wedge not repaired by then is reported as such
SECOND, SECOND_KEEP = "llama3.2:1b", "10m"  # --second-model
WEDGE = {"runner_wedge": True, "wedge_after": 3, "gen_tokens": 20, "gen_rate": 5, "gen_cpu": 0.02}

# In the container: one generation, each NDJSON line (or the end, or the error) with the time it came.
GEN = r'''
import json, sys, time, urllib.request
model, out, stream, num_predict = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
body = {"model": model, "prompt": "tell me a story", "stream": stream}
if num_predict >= 0:
    body["options"] = {"num_predict": num_predict}
req = urllib.request.Request("http://127.0.0.1:11434/api/generate", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
start = time.time()
with open(out, "a") as log:
    def note(kind, text):
        print(json.dumps({"t": time.time(), "start": start, "kind": kind, "text": text}), file=log, flush=True)
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            for line in r:
                note("line", line.decode().strip())
        note("end", "")
    except Exception as e:
        note("error", repr(e))
'''


def actions(c) -> list[dict]:
    return json.loads(c.read("/run/localaid/status.json"))["recent_actions"]


def generate(c, model: str, timeout: float = 60) -> dict:
    r = c.run(["curl", "-s", "-m", str(timeout), "http://127.0.0.1:11434/api/generate", "-d",
               json.dumps({"model": model, "prompt": "again", "stream": False})], check=False, timeout=timeout + 10)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": f"curl exit {r.returncode}: {r.stdout[-200:]}"}


def spawn_generation(c, unit: str, model: str, out: str, stream: bool, num_predict: int = -1) -> None:
    """A generation in the container's own scope (not Ollama's cgroup), in the background."""
    c.run(["systemd-run", "--quiet", "--collect", f"--unit={unit}", "/usr/bin/python3", "/root/gen.py",
           model, out, "1" if stream else "0", str(num_predict)])


def lines(c, path: str) -> list[dict]:
    try:
        return [json.loads(x) for x in c.read(path).splitlines() if x.strip()]
    except Exception:
        return []


def make_box(rootfs: Path, deb: Path, conf_d: dict[str, str]):
    def setup(c):
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        install_fake_ollama(c, version="0.30.12")
    c = boot(rootfs, deb, name="bench-runner-watchdog", setup=setup, private_network=True,
             binds=[(str(wheelhouse()), "/opt/wheelhouse", True)])
    try:
        install_deb(c, deb, conf_d=conf_d)
        c.model = expected_cpu_pick(c)
        wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=300, interval=0.5,
                 message=lambda: f"healthy with the pick warm (last: {status(c)!r})")
        c.write("/root/gen.py", GEN)
    except BaseException:
        c.stop()
        raise
    return c


def settle(c) -> None:
    """A short answer, then the canary that its work calls for, answered: the watchdog at rest."""
    answer = generate(c, c.model)
    if answer.get("response") is None:
        raise RuntimeError(f"the stack does not answer before a wedge: {answer}")
    t = time.time()
    wait_for(lambda: [a for a in actions(c) if a["kind"] == "canary" and a["at"] > t and a["outcome"].startswith("ok")],
             timeout=QUIET + CANARY_TIMEOUT + 10, interval=0.5, message="the canary after a short answer, answered")
    # The round asks every loaded model in turn: let it end, and a cycle pass after its last answer
    # (work within a cycle of a canary's answer is taken for the canary's own: policy_runner.py).
    wait_for(lambda: not [a for a in actions(c)[-1:] if a["kind"] == "canary" and time.time() - a["at"] < 3],
             timeout=QUIET + CANARY_TIMEOUT + 10, interval=0.5, message="the canary round over")
    time.sleep(2)


def wait_for_budget(restarts: list[float], paced: bool) -> float:
    """Shipped budget: wait until this run's restart (about QUIET + CANARY_TIMEOUT from now) will
    be at most restart_limit - 1 in the window, so that Ollama is healthy (not degraded) after it.
    Returns the seconds waited."""
    start = time.monotonic()
    while paced:
        at = time.time() + QUIET + CANARY_TIMEOUT + 5
        if len([r for r in restarts if r > at - WINDOW]) <= LIMIT - 2:
            break
        oldest = min(r for r in restarts if r > at - WINDOW)
        pause = oldest + WINDOW - at + 1
        log(f"restart budget: waiting {pause:.0f} s before the next wedge (shipped restart_limit)")
        time.sleep(max(1.0, pause))
    return time.monotonic() - start


def load_second(c) -> None:
    """A second model beside the pick, loaded for SECOND_KEEP: Ollama lists the loaded models by
    the keep-alive they have left, longest first, so it comes after the pick (kept for good)."""
    c.run(["curl", "-sf", "-m", "120", "http://127.0.0.1:11434/api/pull", "-d",
           json.dumps({"model": SECOND, "stream": False})], timeout=130)
    c.run(["curl", "-sf", "-m", "60", "http://127.0.0.1:11434/api/generate", "-d",
           json.dumps({"model": SECOND, "prompt": "hi", "stream": False, "keep_alive": SECOND_KEEP})])
    time.sleep(2 * INTERVAL + 1)  # its runner's start (the watchdog starts over) a cycle before the next work


def start_wedge(c, n: int, model: str) -> tuple[str, float]:
    """A streamed generation of `model` that works, then wedges: (its output file, its last work)."""
    out = f"/root/wedge-{n}.ndjson"
    c.write(FAULTS, json.dumps(WEDGE))
    spawn_generation(c, f"bench-wedge-{n}", model, out, stream=True)
    # The request has read the faults once its first token came: the wedge is its own, not the next one's.
    wait_for(lambda: [x for x in lines(c, out) if x["kind"] == "line"], timeout=30, interval=0.1,
             message="the wedging generation's first token")
    c.write(FAULTS, "{}")
    time.sleep(3)
    tokens = [x for x in lines(c, out) if x["kind"] == "line" and not json.loads(x["text"]).get("done")]
    if len(tokens) != WEDGE["wedge_after"] or len(lines(c, out)) != len(tokens):
        raise RuntimeError(f"run {n}: expected {WEDGE['wedge_after']} tokens, then nothing: {lines(c, out)}")
    return out, tokens[-1]["t"]


def not_repaired(c, n: int, last_work: float) -> tuple[None, None, str, float]:
    """No kill-restart in time: say what localaid did instead, then restart Ollama by hand (outside
    localaid's budget) so that the next run starts healthy."""
    journal = c.run(["journalctl", "-u", "localaid", "--since", f"@{int(last_work)}", "-o", "cat",
                     "--no-pager"]).stdout.splitlines()
    canaries = [x for x in journal if x.startswith("canary ")]
    log(f"run {n}: NOT repaired within {REPAIR_LIMIT:g} s of the last work; STATUS {status(c)!r}; "
        f"{len(canaries)} canary lines, e.g. {canaries[-1] if canaries else '-'}; localaid's last actions: "
        f"{[(round(a['at'] - last_work, 1), a['kind'], a['target'], a['outcome'][:60]) for a in actions(c)[-6:]]}")
    c.systemctl("restart", "ollama.service")
    return None, None, f"{len(canaries)} failed canaries, no restart", 0.0


def wedge_run(c, n: int, restarts: list[float], paced: bool, second: bool) -> tuple:
    """One wedge: (detected, healthy) seconds after the runner's last work (None: not repaired),
    the evidence, and the seconds it waited for the restart budget."""
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=300, interval=0.5,
             message=lambda: f"healthy before run {n} (last: {status(c)!r})")
    waited = wait_for_budget(restarts, paced)
    if second:
        load_second(c)
    settle(c)
    out, last_work = start_wedge(c, n, SECOND if second else c.model)
    try:
        restart = wait_for(lambda: [a for a in actions(c) if a["kind"] == "kill-restart"
                                    and a["cause"] == "wedged runner" and a["at"] > last_work],
                           timeout=REPAIR_LIMIT - (time.time() - last_work), interval=0.2)[0]
    except TimeoutError:
        return not_repaired(c, n, last_work)
    restarts.append(restart["at"])
    detected = restart["at"] - last_work
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=300, interval=0.2,
             message=lambda: f"run {n}: healthy again (last: {status(c)!r})")
    answer = generate(c, c.model)
    if answer.get("response") != "fake answer":
        raise RuntimeError(f"run {n}: no answer after the repair: {answer}")
    healed = time.time() - last_work
    got = lines(c, out)
    fate = ("answered (done)" if any(x["kind"] == "line" and json.loads(x["text"]).get("done") for x in got)
            else "cut without an answer" if got[-1]["kind"] in ("end", "error") else "still open")
    log(f"run {n}: detected {detected:.1f} s, healthy and answering {healed:.1f} s after the last work; "
        f"the wedged request: {fate}; kill-restart {restart['outcome']}")
    return detected, healed, restart["evidence"], waited


def figures(values: list) -> list[str]:
    """Median and worst of the repaired runs; the runs not repaired, counted."""
    done = [v for v in values if v is not None]
    missed = len(values) - len(done)
    if not done:
        return [f"none repaired within {REPAIR_LIMIT:g} s", f"{missed} of {len(values)} not repaired"]
    worst = f"{max(done):.1f} s" + (f"; {missed} of {len(values)} not repaired within {REPAIR_LIMIT:g} s"
                                    if missed else "")
    return [f"{statistics.median(done):.1f} s", worst]


def wedge_table(c, runs: int, limit: int | None, second: bool) -> int:
    restarts: list[float] = []
    results = [wedge_run(c, n + 1, restarts, limit is None, second) for n in range(runs)]
    d, h = [r[0] for r in results], [r[1] for r in results]
    log("evidence of run 1: " + results[0][2])
    bound = QUIET + CANARY_TIMEOUT + INTERVAL
    waited = [f"run {n + 1} waited {r[3]:.0f} s" for n, r in enumerate(results) if r[3] >= 1]
    budget = (f"shipped restart_limit {LIMIT} in {WINDOW / 60:g} min ({', '.join(waited) or 'no run waited'} "
              "for it)" if limit is None
              else f"restart_limit.count raised to {limit} by the bench's conf.d (runs back to back)")
    which = (f"the runner of a 2nd model ({SECOND}, keep_alive {SECOND_KEEP}, listed after the kept pick) wedged"
             if second else "the pick's runner wedged")
    nrestarts = c.unit_property("ollama.service", "NRestarts")
    print_table(f"Wedged runner, Debian 12 container, fake Ollama 0.30.12, shipped defaults (quiet {QUIET:g} s, "
                f"canary_timeout {CANARY_TIMEOUT:g} s, interval {INTERVAL:g} s); {which}; {runs} runs; {budget}; "
                f"CPUs shared with other work; ollama.service NRestarts {nrestarts}",
                ["measure (from the runner's last work)", "median", "worst", "goal", "design bound"],
                [["detected (kill-restart, cause wedged runner)", *figures(d),
                  "<= 60 s", f"quiet + canary_timeout + ~1 cycle = {bound:g} s"],
                 ["healthy: model warm, a generate answered", *figures(h),
                  "<= 60 s", f"{bound:g} s + Ollama's restart + the model's reload"]])
    return 0 if all(x is not None and x <= 60 for x in h) else 1


# In the container: the soak's load. Rounds of one long answer and 4 requests queued behind it.
SOAK = r'''
import json, random, sys, threading, time, urllib.request
model, seconds, out, faults = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
RATE, CPUS = 4, (0.1, 0.02, 0.005)
rng, lock = random.Random(20), threading.Lock()
def note(obj):
    with lock, open(out, "a") as f:
        print(json.dumps(obj), file=f, flush=True)
def ask(tokens, role, n):
    start, body = time.time(), {"model": model, "prompt": "a long story", "stream": False,
                                "options": {"num_predict": tokens}}
    req = urllib.request.Request("http://127.0.0.1:11434/api/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=1200) as r:
            a = json.load(r)
        note({"round": n, "role": role, "start": start, "end": time.time(), "want": tokens,
              "got": a.get("eval_count"), "error": a.get("error")})
    except Exception as e:
        note({"round": n, "role": role, "start": start, "end": time.time(), "want": tokens, "got": None,
              "error": repr(e)})
end, n = time.time() + seconds, 0
while end - time.time() > 100:
    cpu = CPUS[n % len(CPUS)]
    with open(faults, "w") as f:
        json.dump({"gen_tokens": 100000, "gen_rate": RATE, "gen_cpu": cpu}, f)
    threads = [threading.Thread(target=ask, args=(int(RATE * rng.uniform(60, 120)), "long", n))]
    threads[0].start()
    time.sleep(2)
    threads += [threading.Thread(target=ask, args=(int(RATE * rng.uniform(10, 30)), "queued", n)) for _ in range(4)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    note({"round": n, "cpu": cpu, "ended": time.time()})
    n += 1
    time.sleep(rng.uniform(5, 25))
note({"done": time.time()})
'''


def watch_soak(c, t0: float, seconds: float) -> list[dict]:
    """localaid's actions from t0 until the load has ended and the watchdog's quiet time after it
    has passed (status.json keeps the last 20: read every 2 s)."""
    seen: dict[tuple, dict] = {}
    done_at = None
    while done_at is None or time.time() < done_at + QUIET + 10:
        time.sleep(2)
        for a in actions(c):
            if a["at"] >= t0:
                seen[(a["at"], a["kind"], a["target"])] = a
        if done_at is None:
            done = [x["done"] for x in lines(c, "/root/soak.ndjson") if "done" in x]
            done_at = done[0] if done else None
            if time.time() - t0 > seconds + 900:
                raise RuntimeError("the soak's load did not end")
    return sorted(seen.values(), key=lambda a: a["at"])


def soak(c, seconds: float) -> int:
    """The soak: a table of what localaid did meanwhile."""
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=300, interval=0.5)
    t0, pid0, n0 = time.time(), c.unit_property("ollama.service", "MainPID"), \
        int(c.unit_property("ollama.service", "NRestarts"))
    c.write("/root/soak.py", SOAK)
    c.run(["systemd-run", "--quiet", "--collect", "--unit=bench-soak", "/usr/bin/python3", "/root/soak.py",
           c.model, str(seconds), "/root/soak.ndjson", FAULTS])
    acts = watch_soak(c, t0, seconds)
    took = time.time() - t0
    c.write(FAULTS, "{}")
    results = lines(c, "/root/soak.ndjson")
    answers = [x for x in results if "role" in x]
    good = [x for x in answers if x["got"] == x["want"] and not x["error"]]
    rounds = [x for x in results if "cpu" in x]
    restarts = [a for a in acts if a["kind"] in ("kill-restart", "restart", "start") and "ollama" in a["target"]]
    canaries = [a for a in acts if a["kind"] == "canary"]
    answered = [a for a in canaries if a["outcome"].startswith("ok")]
    n1, pid1 = int(c.unit_property("ollama.service", "NRestarts")), c.unit_property("ollama.service", "MainPID")
    journal = c.run(["journalctl", "-u", "localaid", "--since", f"@{int(t0)}", "-o", "cat", "--no-pager"]).stdout
    wedged = [x for x in journal.splitlines() if "wedged" in x or "canary" in x]
    longs = [x["end"] - x["start"] for x in answers if x["role"] == "long"]
    waits = [x["end"] - x["start"] for x in answers if x["role"] == "queued"]
    cpus = "/".join(f"{x['cpu']:g}" for x in rounds)
    for a in acts:
        log(f"action {a['kind']} {a['target']}: {a['outcome']} ({a['cause']}; {a['evidence']})")
    for x in wedged:
        log("journal: " + x)
    print_table(f"Wedged-runner watchdog soak, Debian 12 container, fake Ollama 0.30.12, shipped defaults; "
                f"{took:.0f} s; CPUs shared with other work",
                ["measure", "value", "goal"],
                [["load", f"{len(rounds)} rounds: a long answer (4 tokens/s, gen_cpu "
                          f"{cpus} s per token) + 4 requests queued behind it", ""],
                 ["answers complete", f"{len(good)} of {len(answers)} (long {min(longs, default=0):.0f}-"
                                      f"{max(longs, default=0):.0f} s, queued ended {min(waits, default=0):.0f}-"
                                      f"{max(waits, default=0):.0f} s after sent)", "all"],
                 ["restarts of Ollama by localaid (any cause)", str(len(restarts)), "0"],
                 ["ollama.service NRestarts, MainPID", f"{n1 - n0}, {'same' if pid1 == pid0 else 'changed'}",
                  "0, same"],
                 ["canaries sent / answered", f"{len(canaries)} / {len(answered)}", "answered = sent"],
                 ["journal lines naming a wedge or a failed canary", str(len(wedged)), "0"]])
    return 0 if not restarts and n1 == n0 and pid1 == pid0 and len(good) == len(answers) and not wedged else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--rootfs", type=Path)
    ap.add_argument("--restart-limit", type=int, metavar="N",
                    help="write a conf.d file raising health.restart_limit.count to N (runs back to back)")
    ap.add_argument("--second-model", action="store_true",
                    help=f"wedge the runner of a second loaded model ({SECOND}) instead of the pick's")
    ap.add_argument("--soak", action="store_true", help="run the soak (long answers and a queue) instead")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    args = ap.parse_args()
    deb, rootfs = deb_and_rootfs(args.deb, args.rootfs)
    conf_d = {"50-doubles.yaml": DOUBLES}
    if args.restart_limit and not args.soak:
        conf_d["60-bench-budget.yaml"] = f"health:\n  restart_limit:\n    count: {args.restart_limit}\n"
    log(f"booting; installing {deb.name}")
    c = make_box(rootfs, deb, conf_d)
    try:
        log(f"healthy, {c.model} warm")
        return soak(c, args.soak_seconds) if args.soak else wedge_table(c, args.runs, args.restart_limit,
                                                                         args.second_model)
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
