#!/usr/bin/python3
"""Open WebUI through localaid: install time against bare uv and pip, upgrade downtime, rollback
time, and the unit's exposure score.

Boots the cached Debian 12 root file system in systemd-nspawn (tests/integration/harness.py),
installs the .deb with Open WebUI disabled, stops localaid.service (so that only the measured
command works), enables Open WebUI in the configuration, then:

1. ``systemctl start localaid-webui-setup.service`` from nothing, as localaid.service does after
   ``apt install`` (uv bootstrap, venv, install, user, secrets, first start to /ready), with the
   time of each phase (from localaid's journal line and the venv's completion marker);
2. the same package set installed bare, cache warm: ``python3 -m venv`` + ``uv pip install``, and
   ``python3 -m venv`` + ``pip install``; and localaid's build again with the same warm cache, through
   its unit (the venv + install part localaid records in the venv's completion marker);
3. ``localaid upgrade webui --version NEXT`` while /health is polled every 20 ms: the longest
   outage is the downtime;
4. ``localaid upgrade webui --version PREVIOUS``: the older release refuses the newer database
   schema, so localaid rolls back (database restored): command time and outage;
5. ``systemd-analyze security open-webui.service``.

With ``--real`` (the real package from this machine's pip configuration) it compares instead, in one
table, for each variant (``--variants slim,full``: slim = webui.torch: false, the default, uv's
--override leaving torch out; full = webui.torch: true) in a container of its own:

- localaid cold: ``apt install`` with Open WebUI enabled, caches empty: end of ``apt install`` →
  /ready, and the venv build time from localaid's completion marker;
- localaid warm (not with ``--no-warm``): the venv removed and rebuilt through
  localaid-webui-setup.service, uv's cache filled;
- bare uv (not with ``--no-bare``), in the same container with the same indexes (and for slim the very
  override file localaid wrote): ``python3 -m venv`` + ``uv pip install open-webui==VERSION``, cold (own
  cache emptied) then warm, each followed by a first start (fresh DATA_DIR) to /health and /ready;

and for each: venv disk (du; with the installer's cache too), packages (dist-info directories),
first start to /health and /ready, RSS of the service's processes after the start; the issue's goals
(healthy ≤ 60 s after ``apt install`` on a cold cache, ≤ 45 s slim; slim venv ≤ 1.5 GB) underneath.
Each row also goes to stderr as soon as it is measured.

    sudo bench/webui.py                   # the fake open-webui (tests/fakes/open_webui), 0.12.4 → 0.12.5
    sudo bench/webui.py --real            # the real package: slim and full, cold and warm, localaid
                                          # and bare uv (GBs of downloads; about 15 minutes)
    sudo bench/webui.py --real --variants slim --no-warm   # the shortest real run

Prints a Markdown table (``--json``: one JSON line).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/integration"))

from harness import Container  # noqa: E402

BASE = "/var/lib/localaid/webui"
PIP_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "/etc/xdg/pip/constraints.txt", "/root/.config/pip/pip.conf")


def tool(argv: list[str]) -> str:
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{argv[0]} failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_pip():
    files = [f for f in PIP_FILES if os.path.isfile(f)]
    text = "".join(Path(f).read_text() for f in files)
    dirs = {m for m in re.findall(r"(?:file://)?(/[^\s'\"]+)", text)
            if os.path.isdir(m) and not m.startswith(("/etc", "/root"))}
    tops = sorted({"/" + "/".join(Path(d).parts[1:3]) for d in dirs})
    return files, [(d, d, True) for d in tops]


class Outage:
    """Polls GET /health every 20 ms from the host; records the longest run of failures."""

    def __init__(self, url: str):
        self.url, self.stop, self.longest, self.failing_since = url, threading.Event(), 0.0, None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            if self.ok():
                if self.failing_since is not None:
                    self.longest = max(self.longest, now - self.failing_since)
                    self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = now
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.failing_since is not None:
            self.longest = max(self.longest, time.monotonic() - self.failing_since)


def timed(c: Container, argv: list[str], timeout: float = 3600, check: bool = True,
          user: str | None = None) -> tuple[float, object]:
    t0 = time.monotonic()
    r = c.run(argv, check=check, timeout=timeout, user=user)
    return time.monotonic() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deb", help="localaid .deb (default: tools/build-deb)")
    ap.add_argument("--real", action="store_true", help="the real open-webui from this machine's index")
    ap.add_argument("--version", default="0.12.4")
    ap.add_argument("--next", default="0.12.5", help="upgrade target (fake: 0.12.5)")
    ap.add_argument("--no-bare", action="store_true", help="--real: skip the bare uv runs")
    ap.add_argument("--no-pip", action="store_true", help="skip the bare pip install (fake mode)")
    ap.add_argument("--variants", default="slim,full",
                    help="--real: which installs, comma-separated: slim (webui.torch: false, the default), "
                         "full (webui.torch: true); default slim,full")
    ap.add_argument("--no-warm", action="store_true", help="--real: cold installs only (no rebuild, no warm bare)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: comma-separated, from {', '.join(VARIANTS)}")
    rootfs = tool([str(REPO / "tools/build-rootfs"), "--suite", "bookworm"])
    deb = Path(a.deb or tool([str(REPO / "tools/build-deb"), "--no-lintian"])).resolve()
    port = free_port()
    binds = [(str(deb), f"/mnt/{deb.name}", True)]
    if a.real:
        files, extra = host_pip()
        binds += extra
        find_links = ""
    else:
        wheelhouse = tool(["/usr/bin/python3", str(REPO / "tests/fakes/open_webui/build-wheelhouse")])
        binds.append((wheelhouse, "/opt/wheelhouse", True))
        files, find_links = [], "  find_links: [/opt/wheelhouse]\n"
    config = (f"ollama:\n  install_script: /nonexistent/install.sh\ngpu:\n  devices:\n    mode: \"off\"\n"
              f"webui:\n  enabled: ENABLED\n  version: \"{a.version}\"\n  listen: 127.0.0.1:{port}\n"
              f"  install_timeout: 1h\n{find_links}health:\n  start_grace:\n    webui: 5m\n")
    if a.real:
        return real_main(a, variants, rootfs, deb, binds, files, config, port)
    rows: list[tuple[str, str]] = []
    out: dict[str, float | str | None] = {}
    with Container(rootfs, binds=binds, name="bench-webui") as c:
        for f in files:
            c.write(f, Path(f).read_text())
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        # 1. from nothing, as a user gets it: Open WebUI enabled, `apt install`, then localaid.service
        # starts localaid-webui-setup.service (its mount namespace and settings included); the clock
        # runs from the end of `apt install` to /ready answering with the version.
        c.write("/etc/localaid/localaid.yaml", config.replace("ENABLED", "true"))
        t_apt, t = install_cold(c, deb, port, a.version)
        out["apt_install_s"] = round(t_apt, 1)
        rows.append(("`apt install` of localaid (Open WebUI enabled in the configuration)", f"{t_apt:.1f} s"))
        marker = json.loads(c.read(f"{BASE}/venvs/{a.version}/.localaid-complete"))
        cold = setup_phases(c)
        out.update(first_install_s=round(t, 1), packages=marker.get("packages"), installer=marker["installer"],
                   first_install_phases=cold)
        rows.append(("first install: end of `apt install` → /ready (uv bootstrap, first start included)",
                     f"{t:.1f} s"))
        phase_rows = [("localaid, cold", t, cold)]

        uv = f"{BASE}/tools/bin/uv"
        if not c.exists(uv):
            uv = c.run(["sh", "-c", "command -v uv"]).stdout.strip()
        uv_env, idx = "", "--no-index --find-links /opt/wheelhouse"
        spec = f"open-webui=={a.version}"

        # 2. same set, warm caches: bare uv, bare pip, localaid's build again (nothing else running)
        c.run(["systemctl", "stop", "open-webui.service"])
        # bare, but as the user localaid builds as (its caches are that user's), without a sandbox
        env = (f"HOME=/var/tmp UV_CACHE_DIR={BASE}/venvs/.cache/uv PIP_CACHE_DIR={BASE}/venvs/.cache/pip "
               f"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt {uv_env}")
        pip_idx = "--find-links /opt/wheelhouse"
        t_uv, r = timed(c, ["sh", "-c", f"rm -rf /var/tmp/bare-uv && {env} /usr/bin/python3 -m venv /var/tmp/bare-uv && "
                                        f"{env} {uv} pip install -q --python /var/tmp/bare-uv/bin/python {idx} {spec}"],
                        user="open-webui")
        t_pip = None
        if not a.no_pip:
            t_pip, r2 = timed(c, ["sh", "-c", f"rm -rf /var/tmp/bare-pip && /usr/bin/python3 -m venv /var/tmp/bare-pip && "
                                              f"{env} /var/tmp/bare-pip/bin/pip install -q --progress-bar off {pip_idx} {spec}"],
                              check=False, user="open-webui")
        c.run(["sh", "-c", "rm -rf /var/tmp/bare-uv /var/tmp/bare-pip"])
        c.run(["sh", "-c", f"rm -rf {BASE}/venvs/{a.version} {BASE}/current"])
        t_la, r = timed(c, ["systemctl", "start", "localaid-webui-setup.service"], check=False)
        marker = json.loads(c.read(f"{BASE}/venvs/{a.version}/.localaid-complete"))
        warm = setup_phases(c)
        phase_rows.append(("localaid, warm reinstall", t_la, warm))
        build = float(marker["seconds"])
        out.update(localaid_build_s=build, bare_uv_s=round(t_uv, 1), bare_pip_s=round(t_pip, 1) if t_pip else None,
                   ratio_uv=round(build / t_uv, 2) if t_uv else None, reinstall_phases=warm)
        rows.append(("venv + install, warm cache: localaid (uv)", f"{build:.1f} s"))
        rows.append(("venv + install, warm cache: bare `uv pip install`", f"{t_uv:.1f} s  (localaid {build / t_uv:.2f}×)"))
        if t_pip is not None:
            rows.append(("venv + install, warm cache: bare `pip install`",
                         f"{t_pip:.1f} s" + ("" if r2.returncode == 0 else " (failed)")))
        rows.append(("reinstall through localaid-webui-setup.service (venv gone), to /ready", f"{t_la:.1f} s"))

        # 3./4. upgrade downtime and rollback (needs two releases on the index)
        health = f"http://127.0.0.1:{port}/health"
        with Outage(health) as o:
            t_up, r = timed(c, ["localaid", "upgrade", "webui", "--version", a.next])
        m = re.search(r"downtime=([0-9.]+)s", r.stdout)
        out.update(upgrade_s=round(t_up, 1), upgrade_downtime_s=round(o.longest, 2))
        rows.append((f"upgrade {a.version} → {a.next}: command", f"{t_up:.1f} s"))
        rows.append(("upgrade downtime (/health polled every 20 ms)",
                     f"{o.longest:.2f} s" + (f" (localaid: stop → /ready {m.group(1)} s)" if m else "")))
        with Outage(health) as o:
            t_rb, r = timed(c, ["localaid", "upgrade", "webui", "--version", a.version], check=False)
        if r.returncode == 0:
            sys.exit("the downgrade was expected to fail (newer database schema) and roll back")
        out.update(rollback_s=round(t_rb, 1), rollback_outage_s=round(o.longest, 2))
        rows.append((f"failed start of {a.version} on a {a.next} database → rollback: command", f"{t_rb:.1f} s"))
        rows.append(("outage during that rollback", f"{o.longest:.2f} s"))

        sec = c.run(["systemd-analyze", "security", "--no-pager", "open-webui.service"], check=False).stdout
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", sec)
        out["exposure"] = float(m.group(1)) if m else None
        rows.append(("open-webui.service exposure (systemd-analyze security)",
                     f"{m.group(1)} {m.group(2)}" if m else "?"))
    if a.json:
        print(json.dumps(out))
    else:
        what = "fake open-webui (tests/fakes)"
        print(f"\nOpen WebUI through localaid — {what} {a.version}, {out.get('packages')} packages\n")
        print("| measure | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        print_phases(phase_rows)
    return 0


# ------------------------------------------------------------------ --real: slim and full, cold and warm
VARIANTS = {"slim": False, "full": True}  # name → webui.torch
GOAL_READY_S = {"slim": 45.0, "full": 60.0}  # cold: end of `apt install` → healthy (the goals)
GOAL_DISK_SLIM = 1.5e9  # bytes: the slim venv
SETTLE_S = 5.0  # RSS is read this long after /ready
BARE_VENV, BARE_CACHE, BARE_DATA = "/var/tmp/bare-uv", "/var/tmp/bare-uv-cache", "/var/tmp/bare-data"

# RSS (KiB) summed over the processes of a unit's cgroup, read inside the container
RSS_CODE = r"""
import os, subprocess, sys
show = subprocess.run(["systemctl", "show", "-p", "ControlGroup", "-p", "MainPID", sys.argv[1]],
                      capture_output=True, text=True).stdout
props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
cg, main = props.get("ControlGroup", ""), props.get("MainPID", "0")
pids = None
for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):  # v2, hybrid, v1
    try:
        pids = open(f"{top}{cg}/cgroup.procs").read().split() if cg else None
        break
    except OSError:
        pass
if pids is None:  # no cgroup file: the main process and its descendants
    parent = {}
    for p in os.listdir("/proc"):
        try:
            parent[p] = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            pass
    pids = [main] if main != "0" else []
    for p in parent:
        q = p
        while q in parent and q != main:
            q = parent[q]
        if q == main and p != main:
            pids.append(p)
total = 0
for p in pids:
    try:
        for line in open(f"/proc/{p}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    except OSError:
        pass
print(total, len(pids))
"""


def real_main(a, variants, rootfs, deb, binds, files, config, port) -> int:
    """One container per variant (localaid's cold install must start from `apt install`): localaid
    cold, localaid warm (venv rebuilt through its unit), then bare uv cold and warm in the same
    container, with the same indexes and, for slim, the same override file."""
    spec = f"open-webui=={a.version}"
    rows: list[dict] = []
    notes: list[str] = []
    t_run = time.monotonic()
    for v in variants:
        torch = VARIANTS[v]
        cfg = config.replace("ENABLED", "true").replace("  install_timeout: 1h\n",
                                                       f"  install_timeout: 1h\n  torch: {str(torch).lower()}\n")
        with Container(rootfs, binds=binds, name=f"bench-webui-{v}") as c:
            for f in files:
                c.write(f, Path(f).read_text())
            c.write("/etc/localaid/localaid.yaml", cfg)
            # localaid, cold: what a new user's `apt install` does, caches empty (a new container)
            t_apt, t = install_cold(c, deb, port, a.version, label=f"{v}: ")
            notes.append(f"{v}: `apt install` of localaid {t_apt:.1f} s")
            rows.append(report(localaid_row(c, f"localaid {v}, cold", v, "cold", a.version, t)))
            if not a.no_warm:  # localaid, warm: the venv rebuilt through its unit, uv's cache filled
                c.run(["sh", "-c", f"rm -rf {BASE}/venvs/{a.version} {BASE}/current"])
                t_la, r = timed(c, ["systemctl", "start", "localaid-webui-setup.service"], check=False)
                if r.returncode != 0:
                    sys.exit(f"{v}: warm rebuild failed:\n{c.journal('localaid-webui-setup.service')[-4000:]}")
                rows.append(report(localaid_row(c, f"localaid {v}, warm (venv rebuilt)", v, "warm", a.version,
                                                t_la)))
            if a.no_bare:
                continue
            c.run(["systemctl", "stop", "open-webui.service"])
            uv = f"{BASE}/tools/bin/uv"
            if not c.exists(uv):
                uv = c.run(["sh", "-c", "command -v uv"]).stdout.strip()
            uv_env, idx = _uv_index(c)
            override = "" if torch else f"--override {BASE}/uv-overrides.txt"  # the very file localaid wrote
            uv_version = c.run([uv, "--version"]).stdout.strip()
            notes.append(f"{v}: bare uv = localaid's ({uv_version}), run as root, own cache {BARE_CACHE}, "
                         f"`uv pip install {override + ' ' if override else ''}{spec}` (no --compile-bytecode)")
            for temp in ("cold",) + (() if a.no_warm else ("warm",)):
                rows.append(report(bare_row(c, f"bare uv {v}, {temp}", v, temp, uv, uv_env,
                                            f"{idx} {override}".strip(), spec)))
            c.run(["sh", "-c", f"rm -rf {BARE_VENV} {BARE_CACHE} {BARE_DATA}"])
    total = time.monotonic() - t_run
    if a.json:
        print(json.dumps({"version": a.version, "rows": rows, "notes": notes, "seconds": round(total, 1)}))
    else:
        print_real(a.version, rows, notes, total)
    return 0


def localaid_row(c: Container, name: str, variant: str, temp: str, version: str, total: float) -> dict:
    """What localaid recorded (completion marker, journal phases) and what the venv and service take."""
    venv = f"{BASE}/venvs/{version}"
    marker = json.loads(c.read(f"{venv}/.localaid-complete"))
    ph = setup_phases(c)
    time.sleep(SETTLE_S)
    return {"name": name, "variant": variant, "temp": temp, "total_s": round(total, 1),
            "build_s": marker.get("seconds"), "install_s": ph.get("install"),
            "to_health_s": ph.get("to_health"), "to_ready_s": ph.get("to_ready"),
            "rss_mib": unit_rss(c, "open-webui.service"), **disk(c, venv, f"{BASE}/venvs/.cache"),
            "packages": dist_count(c, venv), "installer_packages": marker.get("packages"),
            "torch": marker.get("torch")}


def bare_row(c: Container, name: str, variant: str, temp: str, uv: str, uv_env: str, idx: str,
             spec: str) -> dict:
    """`python3 -m venv` + `uv pip install` as root (cold: cache emptied and host's page cache dropped;
    warm: the cache of the cold run), then the first start of that venv, fresh DATA_DIR, same env file
    as open-webui.service, to /health and /ready."""
    p2 = free_port()
    c.run(["sh", "-c", f"rm -rf {BARE_VENV} {BARE_DATA} && mkdir -p {BARE_DATA}"
                       + (f" && rm -rf {BARE_CACHE}" if temp == "cold" else "")])
    envfile = re.sub(r"(?m)^(DATA_DIR|PORT|PIP_CACHE_DIR)=.*$", "", c.read("/etc/localaid/open-webui.env"))
    c.write("/var/tmp/bare.env", envfile + f"DATA_DIR={BARE_DATA}\nPORT={p2}\n", mode=0o600)
    env = f"UV_CACHE_DIR={BARE_CACHE} SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt {uv_env}"
    if temp == "cold":
        drop_caches()
    t0 = time.monotonic()
    t_venv, _ = timed(c, ["/usr/bin/python3", "-m", "venv", BARE_VENV])
    t_inst, r = timed(c, ["sh", "-c", f"{env} {uv} pip install --python {BARE_VENV}/bin/python {idx} {spec}"])
    n_uv = None
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r"\s*Installed\s+(\d+)\s+packages?", line)
        if m:
            n_uv = int(m.group(1))
    unit = f"bare-webui-{variant}-{temp}"
    t_start = time.monotonic()
    c.run(["systemd-run", "--unit", unit, "-p", "EnvironmentFile=/var/tmp/bare.env",
           f"--working-directory={BARE_DATA}", f"{BARE_VENV}/bin/open-webui", "serve", "--host", "127.0.0.1",
           "--port", str(p2)])
    failed = lambda: c.is_active(unit) in ("failed", "inactive")  # noqa: E731
    to_health = wait_health(f"http://127.0.0.1:{p2}", 600, failed)
    ok = to_health is not None and wait_ready(f"http://127.0.0.1:{p2}", spec.split("==")[1], 600, failed)
    to_ready = time.monotonic() - t_start
    total = time.monotonic() - t0
    time.sleep(SETTLE_S)
    rss = unit_rss(c, unit) if ok else None
    c.run(["systemctl", "stop", unit], check=False)
    c.run(["systemctl", "reset-failed", unit], check=False)
    row = {"name": name, "variant": variant, "temp": temp, "total_s": round(total, 1) if ok else None,
           "build_s": round(t_venv + t_inst, 1), "install_s": round(t_inst, 1),
           "to_health_s": round(to_health, 1) if to_health is not None else None,
           "to_ready_s": round(to_ready, 1) if ok else None, "rss_mib": rss,
           **disk(c, BARE_VENV, BARE_CACHE), "packages": dist_count(c, BARE_VENV), "installer_packages": n_uv}
    if not ok:
        row["error"] = "did not become ready: " + c.journal(unit)[-600:].replace("\n", " | ")
    return row


def wait_health(base: str, timeout: float, failed=lambda: False) -> float | None:
    """Seconds until GET /health answers 200 (polled every 0.25 s from the host); None if never."""
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        n += 1
        if n % 20 == 0 and failed():
            return None
        time.sleep(0.25)
    return None


def unit_rss(c: Container, unit: str) -> int | None:
    """MiB, summed over the unit's processes."""
    r = c.run(["/usr/bin/python3", "-c", RSS_CODE, unit], check=False)
    try:
        kib, n = (int(x) for x in r.stdout.split())
    except ValueError:
        return None
    return kib // 1024 if n else None


def disk(c: Container, venv: str, cache: str) -> dict:
    """du of the venv, and of the venv and installer cache together (uv hard-links between them)."""
    r = c.run(["du", "-scx", "-B1", venv, cache], check=False).stdout.split("\n")
    sizes = [int(ln.split()[0]) for ln in r if ln.strip()]
    return {"venv_bytes": sizes[0] if sizes else None, "with_cache_bytes": sizes[-1] if len(sizes) > 2 else None}


def dist_count(c: Container, venv: str) -> int | None:
    r = c.run(["sh", "-c", f"ls -d {venv}/lib/python3*/site-packages/*.dist-info | wc -l"], check=False)
    return int(r.stdout.strip()) if r.stdout.strip().isdigit() else None


def report(row: dict) -> dict:
    """Each row on stderr as soon as it is measured: a run cut short still tells what it got."""
    print(f"[bench] {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def _gb(b) -> str:
    return "" if b is None else f"{b / 1e9:.2f} GB"


def _s(x) -> str:
    return "" if x is None else f"{x:.1f} s"


def print_real(version: str, rows: list[dict], notes: list[str], total: float) -> None:
    print(f"\nReal open-webui {version}: localaid (slim = webui.torch: false, default; full = webui.torch: true) "
          f"against bare uv, cold (empty uv cache) and warm (cache filled)")
    print(f"Goals (issue): healthy ≤ {GOAL_READY_S['full']:.0f} s after `apt install` on a cold cache "
          f"(≤ {GOAL_READY_S['slim']:.0f} s slim); venv disk ≤ {GOAL_DISK_SLIM / 1e9:.1f} GB slim\n")
    print("| run | total → /ready | venv build | of which install | start → /health | start → /ready "
          f"| RSS ({SETTLE_S:.0f} s after /ready) | venv disk | venv + cache | packages (dist-info) |")
    print("|---|" + "---|" * 9)
    for r in rows:
        print(f"| {r['name']} | {_s(r['total_s'])} | {_s(r['build_s'])} | {_s(r['install_s'])} "
              f"| {_s(r['to_health_s'])} | {_s(r['to_ready_s'])} "
              f"| {'' if r['rss_mib'] is None else str(r['rss_mib']) + ' MiB'} | {_gb(r['venv_bytes'])} "
              f"| {_gb(r['with_cache_bytes'])} | {r['packages'] if r['packages'] is not None else ''} |")
    print("\n- total → /ready: localaid cold = end of `apt install` → /ready (uv bootstrap, venv, install, "
          "first start); localaid warm = `systemctl start localaid-webui-setup.service` with the venv removed; "
          "bare = `python3 -m venv` + `uv pip install` + first start")
    print("- venv build: localaid = its completion marker's seconds (venv, seed, install with "
          "--compile-bytecode, verify); bare = venv + uv pip install")
    print("- start → /health, /ready: localaid = its own timings (journal); bare = from `systemd-run`, "
          "fresh DATA_DIR, open-webui.service's env file")
    print("- venv disk: du after the first start (bare venvs: with the .pyc files that start wrote; localaid's "
          "are compiled at install); venv + cache: du of both together (uv hard-links the venv to its cache)")
    for r in rows:
        if r.get("error"):
            print(f"- {r['name']}: {r['error']}")
    for r in rows:
        if r["name"].startswith("localaid") and r["temp"] == "cold":
            goal = GOAL_READY_S[r["variant"]]
            verdict = [f"healthy {_s(r['total_s'])} after `apt install` "
                       f"({'meets' if r['total_s'] <= goal else 'misses'} ≤ {goal:.0f} s)"]
            if r["variant"] == "slim" and r["venv_bytes"] is not None:
                verdict.append(f"venv {_gb(r['venv_bytes'])} "
                               f"({'meets' if r['venv_bytes'] <= GOAL_DISK_SLIM else 'misses'} "
                               f"≤ {GOAL_DISK_SLIM / 1e9:.1f} GB)")
            print(f"- goal, {r['name']}: " + "; ".join(verdict))
    for n in notes:
        print(f"- {n}")
    print(f"- whole run: {total:.0f} s")


PHASES = [  # (key in localaid's phases / the bare run, label)
    ("setup", "venv ∥ pip config + uv bootstrap (wall; each step a build unit as open-webui)"),
    ("venv", "  venv (python3 -m venv)"),
    ("uv_bootstrap", "  uv bootstrap (pip install uv)"),
    ("pip_config", "  pip config read"),
    ("seed", "venv seeded with ensurepip's wheels (uv)"),
    ("install", "uv pip install (wall)"),
    ("uv_resolved", "  resolve"),
    ("uv_prepared", "  download + unpack into the cache"),
    ("uv_installed", "  link into the venv"),
    ("verify", "verify (dist-info)"),
    ("to_ready", "first start → /health and /ready"),
]


def print_phases(phase_rows) -> None:
    print("\n| phase (s) | " + " | ".join(name for name, _t, _p in phase_rows) + " |")
    print("|---|" + "---|" * len(phase_rows))
    for key, label in PHASES:
        vals = [p.get(key) for _n, _t, p in phase_rows]
        if any(v is not None for v in vals):
            print(f"| {label} | " + " | ".join("" if v is None else f"{v:.1f}" for v in vals) + " |")
    print("| **total, to /ready** | " + " | ".join(f"**{t:.1f}**" for _n, t, _p in phase_rows) + " |")


def setup_phases(c: Container) -> dict[str, float]:
    """Phase times from localaid's last "Open WebUI installed" journal line (phases="k=v …")."""
    text = c.journal("localaid-webui-setup.service", output="cat")
    lines = [ln for ln in text.splitlines() if "Open WebUI installed" in ln and "phases=" in ln]
    if not lines:
        return {}
    m = re.search(r'phases="([^"]*)"', lines[-1])
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in (m.group(1).split() if m else []))}


def install_cold(c: Container, deb: Path, port: int, version: str, label: str = "") -> tuple[float, float]:
    """`apt install` with page caches dropped, then localaid.service installs Open WebUI: (seconds
    of `apt install`, seconds from its end to /ready answering `version`). localaid.service is
    stopped afterwards: from then on only the measured commands act."""
    drop_caches()
    t_apt, _ = timed(c, ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold",
                         f"/mnt/{deb.name}"], timeout=600)
    t0 = time.monotonic()
    if not wait_ready(f"http://127.0.0.1:{port}", version, 3600,
                      lambda: c.is_active("localaid-webui-setup.service") == "failed"):
        sys.exit(f"{label}localaid-webui-setup failed:\n{c.journal('localaid-webui-setup.service')[-4000:]}")
    t = time.monotonic() - t0
    c.run(["systemctl", "stop", "localaid.service"])
    wait_inactive(c, "localaid-webui-setup.service")
    return t_apt, t


def wait_ready(base: str, version: str, timeout: float, failed=lambda: False) -> bool:
    """/ready 200 and /api/version == version, polled every 0.25 s from the host."""
    deadline, n = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                if r.status == 200:
                    with urllib.request.urlopen(base + "/api/version", timeout=2) as v:
                        if json.load(v).get("version") == version:
                            return True
        except (OSError, ValueError):
            pass
        n += 1
        if n % 20 == 0 and failed():
            return False
        time.sleep(0.25)
    return False


def wait_inactive(c: Container, unit: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = c.run(["systemctl", "show", "-p", "ActiveState", "-p", "Job", "--value", unit], check=False).stdout.split()
        if st and st[0] in ("inactive", "failed") and len(st) == 1:
            return
        time.sleep(0.25)


def drop_caches() -> None:
    """Cold means cold: the host's page cache of the local index files goes too (best effort)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def _uv_index(c: Container) -> tuple[str, str]:
    """The index settings localaid derives from the machine's pip configuration (same functions):
    its UV_* variables as a shell prefix (localaid passes index URLs by environment), uv's options."""
    code = ("from localaid.provision import webui; from localaid.config import load; import shlex;"
            "cfg = load('/etc/localaid/localaid.yaml', '/etc/localaid/conf.d');"
            "a, env = webui.uv_args(cfg, webui.pip_config(webui.Host(), '/usr/bin/python3'));"
            "print(' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items()));"
            "print(' '.join(a))")
    lines = c.run(["/usr/bin/python3", "-c", code]).stdout.splitlines()
    return lines[0].strip(), lines[1].strip() if len(lines) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
