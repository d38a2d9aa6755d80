#!/usr/bin/python3
"""Open WebUI through localaid: install time against bare uv and pip, upgrade downtime, rollback
time, and the unit's exposure score.

Boots the cached Debian 12 root file system in systemd-nspawn (tests/integration/harness.py),
installs the .deb with Open WebUI disabled, stops localaid.service (so that only the measured
command works), enables Open WebUI in the configuration, then:

1. ``systemctl start localaid-webui-setup.service`` from nothing, as localaid.service does after
   ``apt install`` (uv bootstrap, venv, install, user, secrets, first start to /ready), with the
   time of each phase (from localaid's journal line and the venv's completion marker);
   with ``--real`` (and not ``--no-bare``), the prototype's path right after in the same container,
   caches empty again: ``python3 -m venv`` + ``pip install uv`` + ``uv pip install`` + first start
   of that venv to /ready — what the download and Open WebUI's own first start cost here;
2. the same package set installed bare, cache warm: ``python3 -m venv`` + ``uv pip install``, and
   ``python3 -m venv`` + ``pip install``; and localaid's build again with the same warm cache, through
   its unit (the venv + install part localaid records in the venv's completion marker);
3. ``localaid upgrade webui --version NEXT`` while /health is polled every 20 ms: the longest
   outage is the downtime;
4. ``localaid upgrade webui --version PREVIOUS``: the older release refuses the newer database
   schema, so localaid rolls back (database restored): command time and outage;
5. ``systemd-analyze security open-webui.service``.

    sudo bench/webui.py                   # the fake open-webui (tests/fakes/open_webui), 0.12.4 → 0.12.5
    sudo bench/webui.py --real            # the real package from this machine's pip configuration
                                          # (install figures only; GBs of downloads)

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
    ap.add_argument("--no-bare", action="store_true", help="--real: skip the cold bare (prototype) run")
    ap.add_argument("--no-pip", action="store_true", help="skip the bare pip install (minutes with --real)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
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
    rows: list[tuple[str, str]] = []
    out: dict[str, float | str | None] = {}
    with Container(rootfs, binds=binds, name="bench-webui") as c:
        for f in files:
            c.write(f, Path(f).read_text())
        if not a.real:
            c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        # 1. from nothing, as a user gets it: Open WebUI enabled, `apt install`, then localaid.service
        # starts localaid-webui-setup.service (its mount namespace and settings included); the clock
        # runs from the end of `apt install` to /ready answering with the version.
        c.write("/etc/localaid/localaid.yaml", config.replace("ENABLED", "true"))
        drop_caches()
        t_apt, _ = timed(c, ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold",
                             f"/mnt/{deb.name}"], timeout=600)
        t0 = time.monotonic()
        if not wait_ready(f"http://127.0.0.1:{port}", a.version, 3600,
                          lambda: c.is_active("localaid-webui-setup.service") == "failed"):
            sys.exit(f"localaid-webui-setup failed:\n{c.journal('localaid-webui-setup.service')[-4000:]}")
        t = time.monotonic() - t0
        # From here on only the measured commands act: no supervisor, no setup job in flight.
        c.run(["systemctl", "stop", "localaid.service"])
        wait_inactive(c, "localaid-webui-setup.service")
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
        uv_env, idx = ("", "--no-index --find-links /opt/wheelhouse") if not a.real else _uv_index(c)
        spec = f"open-webui=={a.version}"
        if a.real and not a.no_bare:
            c.run(["systemctl", "stop", "open-webui.service"])
            bare = bare_cold(c, uv_env, idx, spec, port)
            out.update(bare_cold=bare)
            phase_rows.append(("bare prototype, cold", bare["total"], bare))
            rows.append(("bare prototype, cold caches: venv + pip install uv + uv pip install + first start, "
                         "to /ready", f"{bare['total']:.1f} s  (localaid {t / bare['total']:.2f}×)"))

        # 2. same set, warm caches: bare uv, bare pip, localaid's build again (nothing else running)
        c.run(["systemctl", "stop", "open-webui.service"])
        # bare, but as the user localaid builds as (its caches are that user's), without a sandbox
        env = (f"HOME=/var/tmp UV_CACHE_DIR={BASE}/venvs/.cache/uv PIP_CACHE_DIR={BASE}/venvs/.cache/pip "
               f"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt {uv_env}")
        pip_idx = "--find-links /opt/wheelhouse" if not a.real else ""
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

        # 3./4. upgrade downtime and rollback (fake only: needs two releases on the index)
        if not a.real:
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
        what = "real open-webui" if a.real else "fake open-webui (tests/fakes)"
        print(f"\nOpen WebUI through localaid — {what} {a.version}, {out.get('packages')} packages\n")
        print("| measure | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        print_phases(phase_rows)
    return 0


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


def bare_cold(c: Container, uv_env: str, idx: str, spec: str, port: int) -> dict[str, float]:
    """The prototype's path by hand, caches empty: venv, pip install uv, uv pip install, first start."""
    proto, cache, data, p2 = "/var/tmp/proto", "/var/tmp/proto-cache", "/var/tmp/proto-data", free_port()
    c.run(["sh", "-c", f"rm -rf {proto} {cache} {data} && mkdir -p {data}"])
    envfile = c.read("/etc/localaid/open-webui.env")
    envfile = re.sub(r"(?m)^(DATA_DIR|PORT|PIP_CACHE_DIR)=.*$", "", envfile)
    c.write("/var/tmp/proto.env", envfile + f"DATA_DIR={data}\nPORT={p2}\n", mode=0o600)
    env = f"UV_CACHE_DIR={cache} PIP_CACHE_DIR={cache}/pip SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt {uv_env}"
    drop_caches()
    out: dict[str, float] = {}
    t0 = time.monotonic()
    out["venv"], _ = timed(c, ["/usr/bin/python3", "-m", "venv", proto])
    out["uv_bootstrap"], _ = timed(c, ["sh", "-c", f"{env} {proto}/bin/pip install -q uv"])
    out["install"], r = timed(c, ["sh", "-c", f"{env} {proto}/bin/uv pip install --python {proto}/bin/python "
                                            f"{idx} {spec}"])
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r"\s*(Resolved|Prepared|Installed)\s+\d+\s+packages?\s+in\s+(.+?)\s*$", line)
        if m:
            out["uv_" + m.group(1).lower()] = _seconds(m.group(2))
    t_start = time.monotonic()
    c.run(["systemd-run", "--unit", "proto-webui", "-p", "EnvironmentFile=/var/tmp/proto.env",
           f"--working-directory={data}", f"{proto}/bin/open-webui", "serve", "--host", "127.0.0.1",
           "--port", str(p2)])
    wait_ready(f"http://127.0.0.1:{p2}", spec.split("==")[1], 600)
    out["to_ready"] = round(time.monotonic() - t_start, 2)
    out["total"] = round(time.monotonic() - t0, 2)
    c.run(["systemctl", "stop", "proto-webui"], check=False)
    c.run(["sh", "-c", f"rm -rf {proto} {cache} {data} /var/tmp/proto.env"])
    return {k: round(v, 2) for k, v in out.items() if v is not None}


def _seconds(text: str) -> float | None:
    total, found = 0.0, False
    for num, unit in re.findall(r"([0-9.]+)\s*(ms|s|m|h)\b", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
        found = True
    return total if found else None


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
