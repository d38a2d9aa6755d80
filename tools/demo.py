#!/usr/bin/python3
"""Show localaid working in a Debian 12 systemd container (called by tools/demo).

Stand-ins for what cannot be reached from here, each honouring the real contract:
Ollama's download site (HTTPS, test CA) with its install script and a fake `ollama` binary
(tests/fakes/ollama), the open-webui package (a fake wheel in a local wheelhouse,
tests/fakes/open_webui), and no GPU. Everything else is real: apt, systemd, D-Bus, pip/venv.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/integration"))
sys.path.insert(0, str(REPO / "tests/fakes/ollama"))

import server as fake_site  # noqa: E402
from harness import Container, wait_for  # noqa: E402


def port(preferred: int) -> int:
    with socket.socket() as s:  # the container shares this machine's network
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def out(title: str, text: str) -> None:
    print(f"\n$ {title}\n{text.rstrip()}")


def first_chat(c: Container, base: str) -> str:
    """Sign in as the admin localaid made, ask Open WebUI for its default model, chat with it."""
    import json

    def curl(*argv: str) -> dict:
        return json.loads(c.run(["curl", "-s", "-m", "30", *argv], check=False).stdout or "{}")
    password = c.read("/etc/localaid/webui-admin-password").strip()
    token = curl("-H", "Content-Type: application/json", "-d",
                 json.dumps({"email": "admin@example.org", "password": password}), base + "/api/v1/auths/signin")["token"]
    auth = ("-H", f"Authorization: Bearer {token}")
    model = curl(*auth, base + "/api/v1/configs/models").get("DEFAULT_MODELS")
    answer = curl(*auth, "-H", "Content-Type: application/json", "-d",
                  json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]}),
                  base + "/api/chat/completions")
    text = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content")
    return f"default model: {model}\nanswer: {text}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deb", required=True)
    args = ap.parse_args()
    deb = Path(args.deb)
    rootfs = subprocess.run([str(REPO / "tools/build-rootfs")], check=True, capture_output=True,
                            text=True).stdout.split()[-1]
    wheelhouse = subprocess.run(["/usr/bin/python3", str(REPO / "tests/fakes/open_webui/build-wheelhouse")],
                                check=True, capture_output=True, text=True).stdout.split()[-1]
    work = Path("/var/tmp/localaid-demo")
    work.mkdir(parents=True, exist_ok=True)
    site = fake_site.FakeOllamaSite(work / "site").start()
    ollama_port, webui_port = port(11434), port(3000)
    config = f"""\
# written by tools/demo: a stand-in download site for Ollama, a local wheelhouse for Open WebUI;
# everything else is the shipped /etc/localaid/localaid.yaml (ollama.models: auto)
ollama:
  install_script: {site.script_url}
  port: {ollama_port}
webui:
  version: "0.12.4"
  listen: 127.0.0.1:{webui_port}
  find_links: [/opt/wheelhouse]
  admin:
    email: admin@example.org
"""
    c = Container(rootfs, binds=[(str(deb), f"/mnt/{deb.name}", True), (wheelhouse, "/opt/wheelhouse", True)],
                  name="localaid-demo")
    try:
        c.start()
        c.write("/usr/local/share/ca-certificates/demo-ca.crt", site.ca_pem)
        c.run(["update-ca-certificates"])
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        c.write("/etc/localaid/conf.d/50-demo.yaml", config)
        c.write("/run/fake-ollama/faults.json", '{"pull_rate": 150000000}')  # pulls at 150 MB/s
        t0 = time.monotonic()
        out(f"apt install ./{deb.name}", c.run(["apt-get", "install", "-y", "-q", "-o",
                                                 "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
                                                timeout=600).stdout[-600:])
        print("\nprovisioning in the background; the STATUS line as it changes:")
        last = None

        def settled():
            nonlocal last
            line = c.unit_property("localaid", "StatusText")
            if line != last:
                print(f"  {time.monotonic() - t0:5.1f} s  {line}")
                last = line
            return "ollama ok" in line and "open-webui ok" in line and "warm" in line

        wait_for(settled, timeout=300, interval=0.5)
        print(f"\nhealthy {time.monotonic() - t0:.0f} s after apt install started")
        out("systemctl status localaid", c.systemctl("status", "localaid", "--no-pager", check=False).stdout)
        out("localaid status", c.run(["localaid", "status"], check=False).stdout)
        out("localaid models", c.run(["localaid", "models"], check=False).stdout)
        out("localaid models --suggest", c.run(["localaid", "models", "--suggest"], check=False).stdout)
        out("the first chat, through Open WebUI's API with its default model (no setting changed)",
            first_chat(c, f"http://127.0.0.1:{webui_port}"))
        out("systemctl cat ollama (the install script's unit plus localaid's drop-in)",
            c.run(["systemctl", "cat", "ollama"], check=False).stdout)
        out(f"curl http://127.0.0.1:{webui_port}/health",
            c.run(["curl", "-s", f"http://127.0.0.1:{webui_port}/health"], check=False).stdout)
        out("localaid backup (Open WebUI keeps serving; localaid-backup.timer does this daily)",
            c.run(["localaid", "backup"], check=False).stdout)
        out("localaid restore (the list; `localaid restore latest` puts one back)",
            c.run(["localaid", "restore"], check=False).stdout)

        print("\nfault: ollama hangs (SIGSTOP) — systemd alone would show it 'active (running)' forever")
        pid = c.unit_property("ollama", "MainPID")
        t1 = time.monotonic()
        c.systemctl("kill", "--kill-who=main", "-s", "SIGSTOP", "ollama")
        wait_for(lambda: c.unit_property("ollama", "MainPID") not in ("0", pid) and
                 c.unit_property("localaid", "StatusText").startswith("ollama ok"), timeout=60, interval=0.2)
        print(f"healthy again after {time.monotonic() - t1:.1f} s; the journal says:")
        print(c.run(["journalctl", "-u", "localaid", "-o", "cat", "-n", "8", "--no-pager"]).stdout)
        print("demo done: powering the container off (tests/integration/harness.py tears it down)")
        return 0
    finally:
        c.stop()
        site.stop()


if __name__ == "__main__":
    sys.exit(main())
