#!/usr/bin/python3
"""Installing Ollama: localaid's provisioning against running the install script by hand.

Each run boots two fresh Debian containers (tests/integration/harness.py) that reach the fake
download site (tests/fakes/ollama/server.py: HTTPS with a test CA they trust, the fake install
script and release archive):

- "localaid": `apt install ./localaid.deb` with /etc/localaid/localaid.yaml pointing
  ollama.install_script at the site, then localaid-ollama-setup.service (started by the daemon,
  or here if the daemon has not yet) until Ollama answers on its port;
- "by hand": `curl -fsSL URL | sh` as the README of Ollama says, until Ollama answers.

Prints a Markdown table: apt install → Ollama answering, localaid's provisioning job alone, the
script by hand, their ratio (goal ≤ 1.2×), and `systemd-analyze security ollama.service` without
and with localaid's drop-in.

    sudo bench/ollama_install.py [--runs 3] [--deb out/localaid_0.1.0_all.deb] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/integration"))
sys.path.insert(0, str(REPO / "tests/fakes/ollama"))

from harness import Container, wait_for  # noqa: E402
import server as fake_site  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str, *args: str) -> Path:
    r = subprocess.run([str(REPO / "tools" / name), *args], capture_output=True, text=True, check=True)
    return Path(r.stdout.strip().splitlines()[-1])


def trust(c: Container, site) -> None:
    c.write("/usr/local/share/ca-certificates/localaid-test-ca.crt", site.ca_pem)
    c.run(["update-ca-certificates"])


def answering(c: Container, port: int) -> bool:
    r = c.run(["curl", "-s", "--max-time", "1", f"http://127.0.0.1:{port}/"], check=False, timeout=10)
    return r.stdout == "Ollama is running"


def exposure(c: Container) -> float:
    out = c.run(["systemd-analyze", "security", "--no-pager", "ollama.service"], check=False).stdout
    m = re.search(r"Overall exposure level for ollama\.service: ([0-9.]+)", out)
    return float(m.group(1)) if m else float("nan")


def unit_seconds(c: Container, unit: str) -> float:
    """From "Starting" to "Finished" in the journal (a finished oneshot is unloaded, and its
    timestamps with it)."""
    stamps = {}
    for line in c.journal(unit).splitlines():
        m = re.match(r"\[\s*([0-9.]+)\].*systemd\[1\]: (Starting|Finished|Failed to start) ", line)
        if m:
            stamps[m.group(2)] = float(m.group(1))
    return stamps.get("Finished", float("nan")) - stamps["Starting"]


def run_localaid(rootfs: Path, deb: Path, site) -> dict:
    port = free_port()
    config = f"ollama:\n  install_script: {site.script_url}\n  port: {port}\nwebui:\n  enabled: false\n"
    with Container(rootfs, binds=[(deb, f"/mnt/{deb.name}", True)], name="bench-ollama-localaid") as c:
        trust(c, site)
        c.write("/etc/localaid/localaid.yaml", config)
        t0 = time.monotonic()
        c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
              timeout=600)
        apt = time.monotonic() - t0
        # The daemon starts the job on its first cycle; starting it here joins that run.
        c.systemctl("start", "localaid-ollama-setup.service", timeout=600)
        wait_for(lambda: answering(c, port), timeout=120, interval=0.1)
        total = time.monotonic() - t0
        return {"apt_install": apt, "apt_to_answer": total,
                "provision": unit_seconds(c, "localaid-ollama-setup.service"), "exposure_dropin": exposure(c)}


def run_by_hand(rootfs: Path, site) -> dict:
    with Container(rootfs, name="bench-ollama-by-hand") as c:
        trust(c, site)
        # Timed inside the container, as the provisioning job is (its unit's start/exit times).
        ms = c.sh(f"t0=$(date +%s%N); curl -fsSL {site.script_url} | sh >/dev/null 2>&1; "
                  "until [ \"$(curl -s --max-time 1 http://127.0.0.1:11434/)\" = 'Ollama is running' ]; "
                  "do sleep 0.05; done; echo $(( ($(date +%s%N) - t0) / 1000000 ))", timeout=600).stdout
        return {"by_hand": int(ms.strip()) / 1000, "exposure_plain": exposure(c)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--deb", type=Path, help="localaid .deb (default: tools/build-deb)")
    ap.add_argument("--rootfs", type=Path, help="root file system (default: tools/build-rootfs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    deb = (a.deb or tool("build-deb", "--no-lintian")).resolve()
    rootfs = a.rootfs or tool("build-rootfs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ollama-") as tmp, fake_site.FakeOllamaSite(tmp) as site:
        for i in range(a.runs):
            row = run_localaid(rootfs, deb, site)
            row.update(run_by_hand(rootfs, site))
            rows.append(row)
            print(f"run {i + 1}/{a.runs}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()), file=sys.stderr)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    ratio = med["provision"] / med["by_hand"]
    if a.json:
        print(json.dumps({"runs": rows, "median": med, "ratio": ratio}))
        return 0
    print(f"Ollama install (fake download site over HTTPS, median of {a.runs} runs, seconds)\n")
    print("| measure | value | goal |")
    print("| --- | ---: | --- |")
    print(f"| apt install localaid .deb | {med['apt_install']:.1f} s | |")
    print(f"| apt install → Ollama answering | {med['apt_to_answer']:.1f} s | |")
    print(f"| localaid-ollama-setup.service (script, drop-in, enable, start, wait) | {med['provision']:.1f} s | |")
    print(f"| `curl URL \\| sh` by hand until Ollama answers | {med['by_hand']:.1f} s | |")
    print(f"| localaid provisioning / by hand | {ratio:.2f}× | ≤ 1.2× |")
    print(f"| localaid's fixed cost (provisioning − by hand; does not grow with the download) | "
          f"{med['provision'] - med['by_hand']:.1f} s | |")
    print(f"| `systemd-analyze security ollama.service`, script's unit alone | {med['exposure_plain']:.1f} | |")
    print(f"| … with localaid's drop-in | {med['exposure_dropin']:.1f} | ≤ 2.0 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
