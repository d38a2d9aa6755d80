"""HTTPS in front of Open WebUI (webui.tls) under a real systemd, with Debian's real nginx.

One container (module-scoped: the tests run in order), its own network namespace
(private_network) with a "LAN" address of its own on a veth pair (10.77.0.1), so that the
checks below reach the proxy as another machine would, and nothing leaves the container. The
checks run on this host inside that network namespace (nsenter --net), with this host's Python
and its ssl module: a client that trusts the local CA, and one that does not.

Open WebUI is the fake distribution (tests/fakes/open_webui: its /health, sign-in and API); the
real package behind the proxy, and the page in a real browser, are test_real_webui.py's
test_https_in_a_browser. Ollama is the fake of tests/fakes/ollama.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import install_fake_ollama, wait_for

FAKES = Path(__file__).resolve().parents[1] / "fakes"
LAN = "10.77.0.1"
PORT = 3000
BACKEND = 3080
UNIT = "localaid-https.service"

CONFIG = f"""\
ollama:
  install_script: /nonexistent/install.sh
  models: []
gpu:
  devices:
    mode: "off"
webui:
  listen: 0.0.0.0:{PORT}
  find_links: [/opt/wheelhouse]
  tls:
    enabled: true
health:
  start_grace:
    webui: 30s
"""


def prepare(c) -> None:
    c.write("/etc/pip.conf", "[global]\nno-index = true\n")
    c.sh(f"ip link add lan0 type veth peer name lan1 && ip addr add {LAN}/24 dev lan0 && ip link set lan1 up && ip link set lan0 up")
    install_fake_ollama(c)


@pytest.fixture(scope="module")
def container_options(wheelhouse):
    return {"config": CONFIG, "setup": prepare, "private_network": True, "name": "https",
            "binds": [(str(wheelhouse), "/opt/wheelhouse", True), (str(FAKES / "ollama"), "/opt/fakes/ollama", True)]}


# A client on the container's network: this host's python3 inside the container's network
# namespace. It prints one JSON line: the status, the Location header, the body's start, or the
# error (its class and words).
CLIENT = r"""
import http.client, json, ssl, sys
url_host, port, path, ca, plain = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
try:
    if plain:
        conn = http.client.HTTPConnection(url_host, port, timeout=10)
    else:
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        conn = http.client.HTTPSConnection(url_host, port, timeout=10, context=ctx)
    conn.request("GET", path)
    r = conn.getresponse()
    print(json.dumps({"status": r.status, "location": r.getheader("Location"), "body": r.read(400).decode("latin-1")}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "words": str(e)}))
"""


def client(c, path: str = "/health", ca: str = "", plain: bool = False, host: str = LAN, port: int = PORT) -> dict:
    r = subprocess.run(["nsenter", "-t", str(c.leader), "--net", sys.executable, "-c", CLIENT, host, str(port),
                        path, ca, "1" if plain else "0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def status(c) -> dict:
    return json.loads(c.read("/run/localaid/status.json"))


def ca_file(c, tmp_path) -> str:
    path = tmp_path / "ca.crt"
    path.write_text(c.read("/etc/localaid/tls/ca.crt"))
    return str(path)


# ---------------------------------------------------------------------------------- tests
def test_https_serves_from_install_with_the_local_ca(container, tmp_path):
    c = container
    t0 = time.monotonic()
    wait_for(lambda: "https ok :3000" in status(c)["status_line"] and status(c)["healthy"], timeout=240,
             interval=0.5, message="STATUS with the HTTPS proxy ok")
    print(f"\nhttps serving and STATUS healthy {time.monotonic() - t0:.1f} s after the install returned; "
          f"STATUS: {status(c)['status_line']}")
    ca = ca_file(c, tmp_path)
    answer = client(c, "/health", ca)
    assert answer.get("status") == 200, answer
    # Open WebUI itself is on loopback only, behind the proxy
    assert client(c, "/health", plain=True, port=BACKEND).get("error") == "ConnectionRefusedError"
    assert client(c, "/health", plain=True, host="127.0.0.1", port=BACKEND).get("status") == 200
    listen = c.run(["ss", "-Hltnp"]).stdout
    assert re.search(rf"127\.0\.0\.1:{BACKEND}\b", listen) and re.search(rf"0\.0\.0\.0:{PORT}\b.*nginx", listen), listen
    # the certificate is for this host's names and its LAN address
    served = json.loads(c.read("/var/lib/localaid/https/certificate.json"))
    assert LAN in served["names"] and "localhost" in served["names"] and "127.0.0.1" in served["names"]
    assert 89 * 86400 < served["not_after"] - time.time() <= 90 * 86400


def test_plain_http_is_redirected_and_an_untrusting_client_is_refused(container, tmp_path):
    c = container
    answer = client(c, "/auth?x=1", plain=True)
    assert answer.get("status") == 301 and answer.get("location") == f"https://{LAN}:{PORT}/auth?x=1", answer
    refused = client(c, "/health", ca="")  # the system's CAs only
    assert refused.get("error") == "SSLCertVerificationError", refused
    assert "certificate verify failed" in refused["words"]
    ca = client(c, "/localaid-ca.crt", ca_file(c, tmp_path))
    assert ca.get("status") == 200 and ca["body"].startswith("-----BEGIN CERTIFICATE-----")
    out = c.run(["localaid", "https", "ca"])
    assert out.stdout == c.read("/etc/localaid/tls/ca.crt") and "SHA-256 fingerprint:" in out.stderr
    fingerprint = out.stderr.split("SHA-256 fingerprint: ")[1].split()[0]
    said = c.run(["localaid", "status"], check=False).stdout
    line = next(x for x in said.splitlines() if x.startswith("HTTPS: "))
    print(f"\nlocalaid status: {line}")
    assert "certificate of the local CA, valid until" in line and fingerprint in line, line
    assert f"https://localhost:{PORT}/localaid-ca.crt" in line


def test_keys_stay_root_and_the_proxy_is_sandboxed(container):
    c = container
    modes = c.run(["stat", "-c", "%n %a %U", "/etc/localaid/tls", "/etc/localaid/tls/ca.key",
                   "/etc/localaid/tls/server.key", "/etc/localaid/tls/ca.crt"]).stdout.split("\n")
    assert modes[:4] == ["/etc/localaid/tls 755 root", "/etc/localaid/tls/ca.key 600 root",
                         "/etc/localaid/tls/server.key 600 root", "/etc/localaid/tls/ca.crt 644 root"], modes
    user = c.unit_property(UNIT, "User") or c.run(["ps", "-o", "user=", "-p",
                                                    c.unit_property(UNIT, "MainPID")]).stdout.strip()
    assert user not in ("root", "open-webui", "")
    # nginx cannot read the CA's key, nor Open WebUI's secrets
    pid = c.unit_property(UNIT, "MainPID")
    r = c.run(["nsenter", "-t", pid, "-m", "-S", "follow", "-G", "follow", "cat", "/etc/localaid/tls/ca.key"],
              check=False)
    assert r.returncode != 0 and "PRIVATE KEY" not in r.stdout
    exposure = c.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", exposure).group(1))
    print(f"\nsystemd-analyze security {UNIT}: {score}")
    assert score <= 2.0
    # no key or token on any command line, nor in the journal
    cmdlines = c.sh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
    keys = [c.read(p) for p in ("/etc/localaid/tls/ca.key", "/etc/localaid/tls/server.key")]
    body = lambda pem: "".join(pem.strip().splitlines()[1:-1])  # noqa: E731
    for pem in keys:
        assert body(pem)[:40] not in cmdlines
    journal = c.journal()
    assert "PRIVATE KEY" not in journal and not any(body(pem)[:40] in journal for pem in keys)


def test_a_killed_or_hung_proxy_is_repaired_and_a_502_is_not_its_fault(container, tmp_path):
    c = container
    ca = ca_file(c, tmp_path)
    c.run(["pkill", "-STOP", "-f", "nginx: master"])
    c.run(["pkill", "-STOP", "-f", "nginx: worker"])
    t0 = time.monotonic()
    wait_for(lambda: client(c, "/health", ca).get("status") == 200, timeout=30, interval=0.3,
             message="the hung proxy repaired")
    repaired = time.monotonic() - t0
    line = [e for e in c.journal("localaid").splitlines() if "localaid-https.service" in e and "kill-restart" in e]
    print(f"\nhung nginx answering again after {repaired:.1f} s; {line[-1] if line else '(no journal line)'}")
    assert line and repaired <= 15
    # Open WebUI down: the proxy answers 502 and stays ok; Open WebUI is the one reported
    wait_for(lambda: "https ok" in status(c)["status_line"] and status(c)["healthy"], timeout=30, interval=0.5)
    c.systemctl("stop", "open-webui.service")
    try:
        wait_for(lambda: client(c, "/health", ca).get("status") == 502, timeout=10, interval=0.3)
        time.sleep(3)
        line = status(c)["status_line"]
        assert "https ok :3000" in line and "open-webui stopped" in line, line
        assert c.unit_property(UNIT, "NRestarts") == "0"
    finally:
        c.systemctl("start", "open-webui.service")
    wait_for(lambda: status(c)["healthy"], timeout=60, interval=0.5, message="healthy again")


def test_renew_issues_for_new_names_and_tls_off_gives_the_port_back(container, tmp_path):
    """The renewal's run (what the daily timer starts) keeps a certificate that is not due, and
    issues one when the names change (the 30-days-before-the-end rule is policy_tls's, unit-tested
    with its clock), then restarts the proxy to serve it."""
    c = container
    assert c.run(["systemctl", "is-enabled", "localaid-https-renew.timer"]).stdout.strip() == "enabled"
    before = json.loads(c.read("/var/lib/localaid/https/certificate.json"))
    quiet = c.run(["localaid", "https", "renew"])
    assert "renewed" not in quiet.stdout + quiet.stderr
    assert json.loads(c.read("/var/lib/localaid/https/certificate.json"))["fingerprint"] == before["fingerprint"]
    c.write("/etc/localaid/conf.d/60-names.yaml", f"webui:\n  tls:\n    names: [chat.example.lan, {LAN}]\n")
    c.systemctl("start", "localaid-https-renew.service")  # what the timer starts, in its sandbox
    after = json.loads(c.read("/var/lib/localaid/https/certificate.json"))
    assert after["fingerprint"] != before["fingerprint"]
    assert "(renewed)" in c.journal("localaid-https-renew.service")
    assert "chat.example.lan" in after["names"]
    answer = client(c, "/health", ca_file(c, tmp_path))  # the new certificate, served by the restarted proxy
    assert answer.get("status") == 200, answer
    c.run(["rm", "-f", "/etc/localaid/conf.d/60-names.yaml"])
    # off: the proxy stops, Open WebUI takes webui.listen back
    c.write("/etc/localaid/conf.d/70-off.yaml", "webui:\n  tls:\n    enabled: false\n")
    c.systemctl("reload", "localaid")
    wait_for(lambda: client(c, "/health", plain=True).get("status") == 200, timeout=120, interval=0.5,
             message="Open WebUI on webui.listen again, plain HTTP")
    assert c.is_active(UNIT) == "inactive" and c.is_active("localaid-https-renew.timer") == "inactive"
    wait_for(lambda: "https" not in status(c)["status_line"] and status(c)["healthy"], timeout=30, interval=0.5)
