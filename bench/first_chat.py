#!/usr/bin/python3
"""From `apt install` to the first answered chat, on the shipped defaults (ollama.models: auto).

Boots the cached Debian 12 root file system in systemd-nspawn with a private network, installs
Ollama as its install script leaves it (the fake of tests/fakes/ollama, serving pulls at a fixed
--rate), then times, from the start of `apt install ./localaid_*.deb` with the shipped
/etc/localaid/localaid.yaml (a conf.d file says only where the doubles are):

- apt install done;
- the model picked (/var/lib/localaid/model-choice.json written);
- the pull of the pick: its start and end in the set-up job's journal, beside what the download
  alone takes at that rate (its size / --rate): the rest is localaid's share;
- the real Open WebUI answering /health, then /ready;
- `localaid status` healthy;
- the first chat answered: sign in as the admin localaid made, POST /api/chat/completions with
  Open WebUI's default model (DEFAULT_MODELS, which localaid set), no setting changed by hand.

The real open-webui's wheels come from the cache tests/integration/test_real_webui.py prepares
(/var/cache/localaid-tests/real-webui): run that module once first.

    sudo bench/first_chat.py                 # one run at 50 MB/s
    sudo bench/first_chat.py --runs 3 --rate 20e6

Prints a table (--json: one JSON line).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from common import deb_and_rootfs, log, print_table  # noqa: E402  (also puts tests/integration on the path)

from conftest import install_deb  # noqa: E402
from harness import Container, install_fake_ollama, wait_for  # noqa: E402
from test_real_webui import GUEST_WHEELS, NEW, WHEELS, complete  # noqa: E402

DOUBLES = f"""\
ollama:
  install_script: /nonexistent/install.sh
webui:
  find_links: [{GUEST_WHEELS}]
  install_timeout: 1h
health:
  start_grace:
    webui: 5m
"""
STEPS = ("apt install done", "model picked", "pull started", "pull done", "embedding model pulled",
         "Open WebUI /health", "Open WebUI /ready", "localaid healthy", "first chat answered")


def curl(c, *argv: str, timeout: int = 5):
    return c.run(["curl", "-s", "-m", str(timeout), *argv], check=False)


def answers(c, path: str) -> bool:
    return curl(c, "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:3000{path}").stdout == "200"


def healthy(c) -> bool:
    r = c.run(["localaid", "status", "--json"], check=False)
    return r.returncode == 0 and json.loads(r.stdout)["state"]["healthy"]


def chat(c) -> tuple[str, str]:
    """(model, answer) of a chat with Open WebUI's default model, as its admin."""
    password = c.read("/etc/localaid/webui-admin-password").strip()
    token = json.loads(curl(c, "-H", "Content-Type: application/json", "-d",
                            json.dumps({"email": "admin@localhost", "password": password}),
                            "http://127.0.0.1:3000/api/v1/auths/signin").stdout)["token"]
    auth = ("-H", f"Authorization: Bearer {token}")
    model = json.loads(curl(c, *auth, "http://127.0.0.1:3000/api/v1/configs/models").stdout)["DEFAULT_MODELS"]
    curl(c, *auth, "http://127.0.0.1:3000/api/models")  # Open WebUI's view of Ollama's models, fresh
    r = curl(c, *auth, "-H", "Content-Type: application/json", "-d",
             json.dumps({"model": model, "stream": False, "messages": [{"role": "user", "content": "Hello!"}]}),
             "http://127.0.0.1:3000/api/chat/completions", timeout=60)
    return model, json.loads(r.stdout)["choices"][0]["message"]["content"]


def journal_times(c, unit: str, pattern: str) -> list[float]:
    """Wall-clock times of the unit's journal lines matching `pattern`."""
    out = c.run(["journalctl", "-u", unit, "--no-pager", "-o", "short-unix"], check=False).stdout
    return [float(ln.split()[0]) for ln in out.splitlines() if re.search(pattern, ln)]


def one_run(rootfs: Path, deb: Path, rate: float, n: int) -> dict:
    def setup(c):
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        install_fake_ollama(c, faults={"pull_rate": rate})

    with Container(rootfs, name=f"bench-first-chat-{n}", private_network=True,
                   binds=[(str(deb), f"/mnt/{deb.name}", True), (str(WHEELS), GUEST_WHEELS, True)]) as c:
        setup(c)
        wall0, t0 = time.time(), time.monotonic()
        install_deb(c, deb, conf_d={"50-doubles.yaml": DOUBLES})
        at = {"apt install done": time.monotonic() - t0}
        marks = (("Open WebUI /health", lambda: answers(c, "/health")),
                 ("Open WebUI /ready", lambda: answers(c, "/ready")),
                 ("model picked", lambda: c.exists("/var/lib/localaid/model-choice.json")),
                 ("localaid healthy", lambda: healthy(c)))
        deadline = time.monotonic() + 1800
        while len(at) < 1 + len(marks) and time.monotonic() < deadline:
            for name, seen in marks:
                if name not in at and seen():
                    at[name] = time.monotonic() - t0
                    log(f"run {n}: {name} at {at[name]:.1f} s")
            time.sleep(0.25)
        if "localaid healthy" not in at:
            sys.exit(f"not healthy in 30 min: {c.unit_property('localaid.service', 'StatusText')}")
        model, answer = chat(c)
        at["first chat answered"] = time.monotonic() - t0
        pick = json.loads(c.read("/var/lib/localaid/model-choice.json"))
        started = journal_times(c, "localaid-ollama-setup.service", rf"pulling model {re.escape(model)} \(")
        done = journal_times(c, "localaid-ollama-setup.service", rf"pulled model {re.escape(model)}$")
        embedded = journal_times(c, "localaid-ollama-setup.service", r"pulled model nomic-embed-text")
        if started and done:
            at["pull started"], at["pull done"] = started[0] - wall0, done[0] - wall0
        if embedded:
            at["embedding model pulled"] = embedded[0] - wall0
        sizes = {m["name"]: m["size"] for m in json.loads(curl(c, "http://127.0.0.1:11434/api/tags").stdout)["models"]}
        log(f"run {n}: {model} answered {answer[:40]!r}")
        return {"at": at, "model": model, "reason": pick["reason"], "size": sizes[model],
                "download": sizes[model] / rate, "downloads": sum(sizes.values()) / rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--rate", type=float, default=50e6, help="bytes a second the fake Ollama pulls at")
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--rootfs", type=Path)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not complete(NEW):
        sys.exit(f"the real open-webui {NEW}'s wheels are not cached in {WHEELS}: run "
                 "`sudo tools/test tests/integration/test_real_webui.py` once first")
    deb, rootfs = deb_and_rootfs(a.deb, a.rootfs)
    runs = [one_run(rootfs, deb, a.rate, i + 1) for i in range(a.runs)]
    if a.json:
        print(json.dumps({"rate": a.rate, "runs": runs}))
        return 0
    rows = []
    for step in STEPS:
        values = [r["at"][step] for r in runs if step in r["at"]]
        rows.append([step, f"{statistics.median(values):.1f}" if values else "-",
                     f"{max(values):.1f}" if values else "-"])
    pull = [r["at"]["pull done"] - r["at"]["pull started"] for r in runs if "pull done" in r["at"]]
    r0 = runs[0]
    print_table(f"From `apt install` to the first chat, shipped defaults (ollama.models: auto), real open-webui "
                f"{NEW}, fake Ollama pulling at {a.rate / 1e6:.0f} MB/s; {a.runs} run(s), seconds since apt install "
                f"started", ["step", "median", "worst"], rows)
    print(f"\npicked {r0['model']} ({r0['size'] / 1e9:.2f} GB): {r0['reason']}")
    if pull:
        print(f"pull of the pick: {statistics.median(pull):.1f} s (worst {max(pull):.1f} s); its download alone at "
              f"this rate: {r0['download']:.1f} s, {r0['download'] * 9 / 8:.1f} s as the fake paces it (a pause "
              f"after each of its 9 progress lines)")
        print(f"both pulls (the pick, then document chat's embedding model): the downloads alone "
              f"{r0['downloads']:.1f} s, paced {r0['downloads'] * 9 / 8:.1f} s")
    med = {step: statistics.median([r["at"][step] for r in runs if step in r["at"]]) for step in STEPS
           if any(step in r["at"] for r in runs)}
    print(f"first chat {med['first chat answered'] - med['localaid healthy']:.1f} s after localaid said healthy, "
          f"{med['first chat answered'] - med['Open WebUI /ready']:.1f} s after Open WebUI was ready (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
