#!/usr/bin/python3
"""Idle footprint of localaid.service: memory, CPU, tasks and log volume while nothing happens.

Boots the cached Debian root file system in systemd-nspawn (tests/integration/harness.py),
installs the .deb with apt, gives it a healthy stand-in Ollama (a tiny HTTP/1.1 server answering
/, /api/version, /api/tags and /api/ps, keeping connections open as Ollama does, installed as
/usr/local/bin/ollama with its unit) and Open WebUI disabled, waits for localaid to settle, then
samples its main process (and systemd, PID 1 of the container) for a window.

By default the stand-in holds one model loaded, as Ollama does on the shipped defaults (the pick is
preloaded with keep_alive -1): /api/ps lists it, kept forever, and `ollama serve` keeps a sleeping
runner child (named llama-server, as from Ollama 0.30) in its cgroup, so localaid's per-cycle
reads of the runners (the wedged-runner watchdog) are part of what is measured; the runner never
works, so no canary is sent. --no-model: nothing loaded and no child (the measurement before
the watchdog existed).

    sudo bench/idle_footprint.py                      # builds the .deb and rootfs if needed
    sudo bench/idle_footprint.py --deb out/localaid_0.1.0_all.deb --seconds 60 --suite trixie
    sudo bench/idle_footprint.py --baseline HEAD~1    # and the build of HEAD~1, side by side
    sudo bench/idle_footprint.py --baseline-deb /path/to/previous/localaid_0.1.0_all.deb
    sudo bench/idle_footprint.py --no-model           # no model loaded, no runner child
    sudo bench/idle_footprint.py --expose             # a GPU node: nginx with TLS and a token in front

With a baseline, both builds are measured one after the other in fresh containers of the same
root file system with the same settings (the baseline first), and one table shows both.
--baseline REF builds REF's .deb in a temporary git worktree (bench/common.py: deb_of_ref).

Prints a Markdown table (``--json`` for one machine-readable line per build). Needs root.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/integration"))

from common import deb_of_ref  # noqa: E402
from harness import Container, ContainerError  # noqa: E402

STANDIN = r'''#!/usr/bin/python3
"""Stand-in for ollama: `ollama serve` answers the probes localaid makes; `ollama --version`."""
import ctypes, json, os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
if sys.argv[1:2] in (["--version"], ["-v"]):
    print("ollama version is 0.0.0-standin"); sys.exit(0)
host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
MODEL = os.environ.get("STANDIN_MODEL")  # loaded for good, with a sleeping runner child
TAGS = [{"name": MODEL, "model": MODEL, "size": 637700138, "digest": "2644915ede35" * 5 + "abcd",
         "modified_at": "2026-01-01T00:00:00Z", "details": {"format": "gguf", "parameter_size": "1B"}}] if MODEL else []
PS = [{**TAGS[0], "expires_at": "2318-11-20T11:42:45.000000000+00:00", "size_vram": 0,
       "context_length": 4096}] if MODEL else []
if MODEL and os.fork() == 0:  # the runner: a child in the cgroup that never works
    libc = ctypes.CDLL(None)
    libc.prctl(15, b"llama-server", 0, 0, 0)  # PR_SET_NAME
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    while True:
        signal.pause()
BODIES = {"/": (b"Ollama is running", "text/plain"),
          "/api/version": (json.dumps({"version": "0.0.0-standin"}).encode(), "application/json"),
          "/api/tags": (json.dumps({"models": TAGS}).encode(), "application/json"),
          "/api/ps": (json.dumps({"models": PS}).encode(), "application/json")}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # Go's net/http (Ollama) keeps connections open
    def do_GET(self):
        body, ctype = BODIES.get(self.path.split("?")[0], (b"404 page not found", "text/plain"))
        self.send_response(200 if self.path.split("?")[0] in BODIES else 404)
        self.send_header("Content-Type", ctype); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    do_HEAD = do_GET
    def log_message(self, *a): pass
ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), H).serve_forever()
'''

UNIT = """\
[Unit]
Description=stand-in ollama
After=network.target
[Service]
ExecStart=/usr/local/bin/ollama serve
Environment=OLLAMA_HOST=127.0.0.1:{port}
Environment=STANDIN_MODEL={model}
Restart=always
[Install]
WantedBy=multi-user.target
"""

MODEL = "llama3.2:1b"  # what the stand-in holds loaded (unless --no-model)

# models: [] (the default before ollama.models: auto): the stand-in cannot pull, so an auto pick
# would keep its set-up job failing and retrying; what is measured is the supervisor at rest.
CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
  port: {port}
  models: []
webui:
  enabled: false
"""


# --expose: this host as a GPU node (ollama.expose): a bundle from a site CA made in /root (the
# UI host's side, run here), joined with `localaid node join`; nginx then serves the stand-in
# over TLS and localaid probes that proxy every cycle as well.
NODE_ADD = r"""
import sys, types
from localaid.config import Config
from localaid.provision.https import nodejoin
args = types.SimpleNamespace(name="bench-node", addresses=["127.0.0.1"], port=int(sys.argv[1]),
                             output="/root/bench-node.localaid-node")
sys.exit(nodejoin.add_main(args, Config(), tls_dir="/root/site-ca"))
"""


def join_as_node(c: Container) -> None:
    c.run(["python3", "-c", NODE_ADD, str(free_port())])
    c.run(["localaid", "node", "join", "/root/bench-node.localaid-node"])
    deadline = time.monotonic() + 120
    while "https ok" not in c.unit_property("localaid", "StatusText"):
        if time.monotonic() > deadline:
            raise ContainerError(f"no https ok: {c.unit_property('localaid', 'StatusText')}")
        time.sleep(0.5)


def free_port() -> int:
    # Containers share the host network: pick a port nobody uses right now.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str, *args: str) -> Path:
    r = subprocess.run([str(REPO / "tools" / name), *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tools/{name} failed:\n{r.stderr[-3000:]}")
    return Path(r.stdout.split()[-1])


def proc_sample(c: Container, pid: str) -> dict:
    status = dict(line.split(":", 1) for line in c.read(f"/proc/{pid}/status").splitlines() if ":" in line)
    stat = c.read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    fds = c.run(["ls", f"/proc/{pid}/fd"]).stdout.split()
    kb = lambda k: int(status[k].split()[0])  # noqa: E731
    return {"rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM"), "anon_kb": kb("RssAnon"),
            "threads": int(status["Threads"]), "fds": len(fds),
            "cpu_ticks": int(stat[11]) + int(stat[12])}  # utime + stime


def pid1_ticks(c: Container) -> int:
    stat = c.read("/proc/1/stat").rsplit(")", 1)[1].split()
    return int(stat[11]) + int(stat[12])


def ollama_processes(c: Container) -> str:
    """ollama.service's processes (the server, and the runner a loaded model has) by name."""
    cgroup = c.unit_property("ollama.service", "ControlGroup")
    pids = c.run(["sh", "-c", f"cat /sys/fs/cgroup{cgroup}/cgroup.procs 2>/dev/null || "
                  f"cat /sys/fs/cgroup/systemd{cgroup}/cgroup.procs"]).stdout.split()
    return " + ".join(c.read(f"/proc/{p}/comm").strip() for p in pids)


def canaries(c: Container) -> int:
    """The wedged-runner watchdog's one-token requests among localaid's recent actions."""
    try:
        recent = json.loads(c.read("/run/localaid/status.json")).get("recent_actions", [])
    except (ContainerError, ValueError):
        return 0
    return len([x for x in recent if x.get("kind") == "canary"])


def measure(deb: Path, rootfs: Path, a) -> dict:
    """One build's idle footprint, in a fresh container."""
    port = free_port()
    with Container(rootfs, binds=[(deb, f"/mnt/{deb.name}", True)], name="bench-idle") as c:
        c.write("/usr/local/bin/ollama", STANDIN, mode=0o755)
        c.write("/etc/systemd/system/ollama.service", UNIT.format(port=port, model="" if a.no_model else MODEL))
        c.systemctl("daemon-reload")
        c.systemctl("enable", "--now", "ollama.service")
        c.write("/etc/localaid/localaid.yaml", CONFIG.format(port=port))
        t0 = time.monotonic()
        c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
              timeout=600)
        apt_s = time.monotonic() - t0
        c.wait_for_unit("localaid.service", "active", timeout=60)
        if a.expose:
            join_as_node(c)
        time.sleep(a.warmup)
        pid = c.unit_property("localaid", "MainPID")
        nrestarts0 = c.unit_property("localaid", "NRestarts")
        lines0 = len(c.journal("localaid", output="cat").splitlines())
        p0, s0, t_start = pid1_ticks(c), proc_sample(c, pid), time.monotonic()
        time.sleep(a.seconds)
        s1, p1, elapsed = proc_sample(c, pid), pid1_ticks(c), time.monotonic() - t_start
        lines1 = len(c.journal("localaid", output="cat").splitlines())
        if c.unit_property("localaid", "MainPID") != pid or c.unit_property("localaid", "NRestarts") != nrestarts0:
            raise ContainerError("localaid restarted during the measurement")
        clk = int(c.run(["getconf", "CLK_TCK"]).stdout)
        return {
            "deb": str(deb),
            "suite": a.suite,
            "python": c.run(["python3", "-c", "import platform; print(platform.python_version())"]).stdout.strip(),
            "window_s": round(elapsed, 1),
            "cpu_percent": round(100.0 * (s1["cpu_ticks"] - s0["cpu_ticks"]) / clk / elapsed, 2),
            "systemd_cpu_percent": round(100.0 * (p1 - p0) / clk / elapsed, 2),
            "rss_mb": round(s1["rss_kb"] / 1024, 1),
            "peak_rss_mb": round(s1["hwm_kb"] / 1024, 1),
            "anon_mb": round(s1["anon_kb"] / 1024, 1),
            "rss_growth_kb": s1["rss_kb"] - s0["rss_kb"],
            "threads": s1["threads"],
            "fds": s1["fds"],
            "journal_lines_per_min": round((lines1 - lines0) * 60.0 / elapsed, 1),
            "tasks": c.unit_property("localaid", "TasksCurrent"),
            "ollama_processes": ollama_processes(c),
            "canaries_sent": canaries(c),
            "status": c.unit_property("localaid", "StatusText"),
            "apt_install_s": round(apt_s, 1),
            "expose": bool(a.expose),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deb", type=Path, help="localaid .deb (default: tools/build-deb)")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--baseline", metavar="REF", help="also measure the build of this git ref (e.g. HEAD~1)")
    base.add_argument("--baseline-deb", type=Path, metavar="PATH", help="also measure this .deb")
    ap.add_argument("--rootfs", type=Path, help="root file system (default: tools/build-rootfs)")
    ap.add_argument("--suite", default="bookworm", choices=["bookworm", "trixie"])
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds to settle after active")
    ap.add_argument("--seconds", type=float, default=180.0, help="measurement window per build")
    ap.add_argument("--no-model", action="store_true",
                    help="the stand-in Ollama holds no model loaded and has no runner child")
    ap.add_argument("--expose", action="store_true",
                    help="as a GPU node: joined, nginx serving Ollama over TLS, its proxy probed every cycle")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    deb = (a.deb or tool("build-deb", "--no-lintian")).resolve()
    baseline = deb_of_ref(a.baseline) if a.baseline else a.baseline_deb.resolve() if a.baseline_deb else None
    rootfs = a.rootfs or tool("build-rootfs", "--suite", a.suite)
    builds = ([(f"baseline {a.baseline or baseline.name}", baseline)] if baseline else []) + [("this build", deb)]
    results = []
    for label, path in builds:
        print(f"measuring {label}: {path} ({a.seconds:g} s after {a.warmup:g} s warm-up)", file=sys.stderr)
        try:
            results.append((label, measure(path, rootfs, a)))
        except ContainerError as e:
            print(f"{label}: {e}", file=sys.stderr)
            return 1
    if a.json:
        for label, r in results:
            print(json.dumps({"build": label, **r}))
        return 0
    first = results[0][1]
    loaded = "nothing loaded" if a.no_model else f"stand-in Ollama with {MODEL} loaded and a sleeping runner"
    print(f"localaid idle footprint ({first['suite']}, Python {first['python']}, {loaded}, "
          f"{a.seconds:g} s window after {a.warmup:g} s warm-up, one container per build; "
          f"CPUs shared with other work)\n")
    print("| metric | " + " | ".join(label for label, _ in results) + " |")
    print("| --- |" + " --- |" * len(results))
    for k in first:
        if k not in ("suite", "python", "deb"):
            print(f"| {k} | " + " | ".join(str(r[k]) for _, r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
