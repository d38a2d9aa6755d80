#!/usr/bin/python3
"""Open WebUI through localaid: install time against bare uv and pip, upgrade downtime, rollback
time, and the unit's exposure score.

Boots the cached Debian 12 root file system in systemd-nspawn (tests/integration/harness.py),
installs the .deb with Open WebUI disabled, stops localaid.service (so that only the measured
command works), enables Open WebUI in the configuration, then:

1. ``localaid provision webui`` from nothing (uv bootstrap, venv, install, user, secrets, start);
2. the same package set installed bare, cache warm: ``python3 -m venv`` + ``uv pip install``, and
   ``python3 -m venv`` + ``pip install``; and localaid's build again with the same warm cache
   (the venv + install part localaid records in the venv's completion marker);
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


def timed(c: Container, argv: list[str], timeout: float = 3600, check: bool = True) -> tuple[float, object]:
    t0 = time.monotonic()
    r = c.run(argv, check=check, timeout=timeout)
    return time.monotonic() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deb", help="localaid .deb (default: tools/build-deb)")
    ap.add_argument("--real", action="store_true", help="the real open-webui from this machine's index")
    ap.add_argument("--version", default="0.12.4")
    ap.add_argument("--next", default="0.12.5", help="upgrade target (fake: 0.12.5)")
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
        c.write("/etc/localaid/localaid.yaml", config.replace("ENABLED", "false"))
        c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
              timeout=600)
        c.run(["systemctl", "stop", "localaid.service"])
        c.write("/etc/localaid/localaid.yaml", config.replace("ENABLED", "true"))

        # 1. from nothing, through localaid
        t, r = timed(c, ["localaid", "provision", "webui"])
        if r.returncode != 0:
            sys.exit(f"localaid provision webui failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
        marker = json.loads(c.read(f"{BASE}/venvs/{a.version}/.localaid-complete"))
        out.update(first_install_s=round(t, 1), packages=marker.get("packages"), installer=marker["installer"])
        rows.append(("first install through localaid, to /ready (uv bootstrap included)", f"{t:.1f} s"))

        # 2. same set, warm caches: bare uv, bare pip, localaid's build again
        uv = f"{BASE}/tools/bin/uv"
        if not c.exists(uv):
            uv = c.run(["sh", "-c", "command -v uv"]).stdout.strip()
        env = "UV_CACHE_DIR=/var/cache/localaid/uv PIP_CACHE_DIR=/var/cache/localaid/pip SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
        idx = "--no-index --find-links /opt/wheelhouse" if not a.real else _uv_index(c)
        pip_idx = "--find-links /opt/wheelhouse" if not a.real else ""
        spec = f"open-webui=={a.version}"
        t_uv, r = timed(c, ["sh", "-c", f"rm -rf /var/tmp/bare-uv && {env} /usr/bin/python3 -m venv /var/tmp/bare-uv && "
                                        f"{env} {uv} pip install -q --python /var/tmp/bare-uv/bin/python {idx} {spec}"])
        t_pip, r2 = timed(c, ["sh", "-c", f"rm -rf /var/tmp/bare-pip && /usr/bin/python3 -m venv /var/tmp/bare-pip && "
                                          f"{env} /var/tmp/bare-pip/bin/pip install -q --progress-bar off {pip_idx} {spec}"],
                          check=False)
        c.run(["sh", "-c", "rm -rf /var/tmp/bare-uv /var/tmp/bare-pip"])
        c.run(["systemctl", "stop", "open-webui.service"])
        c.run(["sh", "-c", f"rm -rf {BASE}/venvs/{a.version} {BASE}/current"])
        t_la, r = timed(c, ["localaid", "provision", "webui"])
        marker = json.loads(c.read(f"{BASE}/venvs/{a.version}/.localaid-complete"))
        build = float(marker["seconds"])
        out.update(localaid_build_s=build, bare_uv_s=round(t_uv, 1), bare_pip_s=round(t_pip, 1),
                   ratio_uv=round(build / t_uv, 2) if t_uv else None)
        rows.append(("venv + install, warm cache: localaid (uv)", f"{build:.1f} s"))
        rows.append(("venv + install, warm cache: bare `uv pip install`", f"{t_uv:.1f} s  (localaid {build / t_uv:.2f}×)"))
        rows.append(("venv + install, warm cache: bare `pip install`",
                     f"{t_pip:.1f} s" + ("" if r2.returncode == 0 else " (failed)")))
        rows.append(("reinstall through localaid (venv gone), to /ready", f"{t_la:.1f} s"))

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
    return 0


def _uv_index(c: Container) -> str:
    """The index options localaid derives from the machine's pip configuration (same function)."""
    code = ("from localaid.provision import webui; from localaid.config import load; import os, sys;"
            "cfg = load('/etc/localaid/localaid.yaml', '/etc/localaid/conf.d');"
            "h = webui.Host(); e = webui._base_env();"
            "a, env = webui.uv_args(cfg, webui.pip_config(h, '/usr/bin/python3', e));"
            "print(' '.join(a))")
    return c.run(["/usr/bin/python3", "-c", code]).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
