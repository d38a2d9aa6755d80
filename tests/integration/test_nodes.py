"""A UI host over two Ollama nodes: localaid takes a node that stops answering out of Open
WebUI's use through Open WebUI's admin API, and puts it back when it answers again.

One container plays the UI host (ollama.enabled: false, webui.ollama_urls), with the two nodes
as fake Ollamas (tests/fakes/ollama) on two loopback ports beside it; the fake Open WebUI keeps
its connections as open-webui 0.12 does (per-connection `enable` flags, changed through
POST /ollama/config/update) and sends each chat to one enabled connection at random, with no
health check. A node dropped off the network (three hosts on a bridge) is not in this module.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import REPO, boot
from harness import wait_for

NODES = {"a": 11501, "b": 11502}
URLS = [f"http://127.0.0.1:{p}" for p in NODES.values()]
ADMIN = "admin@localhost"


def ui_host_config(urls) -> str:
    """A UI host over `urls` with the fake Open WebUI from the wheelhouse (test_fleet.py too)."""
    return (f"ollama:\n  enabled: false\nwebui:\n  find_links: [/opt/wheelhouse]\n  ollama_urls: [{', '.join(urls)}]\n"
            f"health:\n  start_grace:\n    webui: 30s\n")


CONFIG = ui_host_config(URLS)


def node_unit(name: str, port: int) -> str:
    return (f"[Unit]\nDescription=fake Ollama node {name}\n[Service]\n"
            f"ExecStart=/usr/bin/python3 /opt/fakes/ollama/ollama serve\n"
            f"Environment=OLLAMA_HOST=127.0.0.1:{port} OLLAMA_MODELS=/var/lib/node-{name}/models "
            f"FAKE_OLLAMA_FAULTS=/run/node-{name}/faults.json\nRestart=no\n")


@pytest.fixture(scope="module")
def uihost(deb, wheelhouse, rootfs):
    def setup(c):
        for name, port in NODES.items():
            c.run(["mkdir", "-p", f"/var/lib/node-{name}/models", f"/run/node-{name}"])
            c.write(f"/run/node-{name}/faults.json", "{}")
            c.write(f"/etc/systemd/system/node-{name}.service", node_unit(name, port))
        c.systemctl("daemon-reload")
        for name, port in NODES.items():
            c.systemctl("start", f"node-{name}.service")
            wait_for(lambda p=port: c.run(["curl", "-sf", f"http://127.0.0.1:{p}/api/version"],
                                          check=False).returncode == 0, timeout=30)
            c.run(["curl", "-sf", f"http://127.0.0.1:{port}/api/pull", "-d", '{"model": "tinyllama", "stream": false}'])
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")

    c = boot(rootfs, deb, install=True, config=CONFIG, setup=setup, name="uihost", private_network=True,
             binds=[(str(wheelhouse), "/opt/wheelhouse", True), (str(REPO / "tests/fakes/ollama"), "/opt/fakes/ollama", True)])
    yield c
    c.stop()


def status(c) -> str:
    return c.unit_property("localaid", "StatusText")


def token(c) -> str:
    password = c.read("/etc/localaid/webui-admin-password").strip()
    r = c.run(["curl", "-sf", "-H", "Content-Type: application/json", "-d",
               json.dumps({"email": ADMIN, "password": password}), "http://127.0.0.1:3000/api/v1/auths/signin"],
              check=False)
    return json.loads(r.stdout)["token"] if r.returncode == 0 else ""  # "" while Open WebUI restarts


def in_use(c, tok: str) -> list[bool] | None:
    """Open WebUI's `enable` flag of each connection (None while it does not answer)."""
    r = c.run(["curl", "-sf", "-H", f"Authorization: Bearer {tok}", "http://127.0.0.1:3000/ollama/config"],
              check=False)
    if r.returncode != 0:
        return None
    doc = json.loads(r.stdout)
    return [bool((doc["OLLAMA_API_CONFIGS"].get(str(i)) or {}).get("enable", True))
            for i in range(len(doc["OLLAMA_BASE_URLS"]))]


def chats(c, tok: str, n: int) -> list[str]:
    """n chats through Open WebUI; the backend each went to, or "failed: ..." (15 s each at most)."""
    script = ("import json, sys, urllib.request\n"
              "for _ in range(int(sys.argv[2])):\n"
              "    req = urllib.request.Request('http://127.0.0.1:3000/api/chat/completions', json.dumps(\n"
              "        {'model': 'tinyllama', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode(),\n"
              "        {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + sys.argv[1]})\n"
              "    try:\n"
              "        print(json.loads(urllib.request.urlopen(req, timeout=15).read())['backend'])\n"
              "    except Exception as e:\n"
              "        print('failed: %s' % e)\n")
    return c.run(["python3", "-c", script, tok, str(n)], timeout=30 + 16 * n).stdout.split("\n")[:n]


def test_ui_host_runs_no_ollama_and_watches_its_nodes(uihost):
    c = uihost
    wait_for(lambda: "nodes 2/2 ok" in status(c) and "open-webui ok" in status(c), timeout=120)
    line = status(c)
    assert not line.startswith("ollama") and "ollama setup" not in line, line
    assert c.run(["systemctl", "list-units", "--all", "--no-legend", "localaid-ollama-setup.service"]
                 ).stdout.strip() == "" or c.is_active("localaid-ollama-setup.service") != "active"
    env = c.read("/etc/localaid/open-webui.env")
    assert f'OLLAMA_BASE_URLS="{";".join(URLS)}"' in env, env
    tok = token(c)
    assert in_use(c, tok) == [True, True]
    assert {b for b in chats(c, tok, 12)} <= set(URLS)
    out = c.run(["localaid", "status"], check=False).stdout  # each node: state, latency, in use
    rows = [line.split(None, 5) for line in out.splitlines() if line.startswith("http://127.0.0.1:115")]
    assert [(r[0], r[1], r[4]) for r in rows] == [(URLS[0], "ok", "yes"), (URLS[1], "ok", "yes")], out
    assert all(r[5].startswith("Ollama ") and ", 1 models" in r[5] for r in rows), out  # version, models


@pytest.mark.parametrize("fault", ["SIGSTOP", "stopped"])
def test_a_node_that_stops_answering_is_taken_out_and_put_back(uihost, fault):
    c = uihost
    tok = token(c)
    wait_for(lambda: in_use(c, tok) == [True, True] and "nodes 2/2 ok" in status(c), timeout=60)
    t0 = time.monotonic()
    if fault == "SIGSTOP":  # alive, not answering: Open WebUI would wait its 300 s client timeout
        c.systemctl("kill", "-s", "SIGSTOP", "node-b.service")
    else:
        c.systemctl("stop", "node-b.service")
    try:
        wait_for(lambda: in_use(c, tok) == [True, False], timeout=15, interval=0.2)
        out_after = time.monotonic() - t0
        line = wait_for(lambda: (t := status(c)) and "nodes 1/2 ok (127.0.0.1:11502 out" in t and t, timeout=10)
        backends = chats(c, tok, 20)  # while the node is out: every chat goes to node a
        assert backends == [URLS[0]] * 20, backends
    finally:
        t1 = time.monotonic()
        if fault == "SIGSTOP":
            c.systemctl("kill", "-s", "SIGCONT", "node-b.service")
        else:
            c.systemctl("start", "node-b.service")
    wait_for(lambda: in_use(c, tok) == [True, True], timeout=15, interval=0.2)
    back_after = time.monotonic() - t1
    print(f"\nnode b {fault}: out of Open WebUI's use after {out_after:.1f} s, back {back_after:.1f} s after "
          f"it answered; STATUS: {line}")
    assert out_after <= 10 and back_after <= 10
    journal = c.journal("localaid")
    assert f"node-disable {URLS[1]}: ok, out of Open WebUI's use" in journal
    assert f"node-enable {URLS[1]}: ok, back in Open WebUI's use" in journal
    wait_for(lambda: "nodes 2/2 ok" in status(c), timeout=10)


def test_a_connection_the_admin_switched_off_is_left_off(uihost):
    c = uihost
    tok = token(c)
    wait_for(lambda: in_use(c, tok) == [True, True] and "nodes 2/2 ok" in status(c), timeout=60)
    time.sleep(2)  # localaid has seen it in use since it put it back
    doc = json.loads(c.run(["curl", "-sf", "-H", f"Authorization: Bearer {tok}",
                            "http://127.0.0.1:3000/ollama/config"]).stdout)
    doc["OLLAMA_API_CONFIGS"] = {"1": {"enable": False}}
    c.run(["curl", "-sf", "-H", f"Authorization: Bearer {tok}", "-H", "Content-Type: application/json", "-d",
           json.dumps(doc), "http://127.0.0.1:3000/ollama/config/update"])
    try:
        time.sleep(4)
        assert in_use(c, tok) == [True, False]  # node b answers, but the admin's choice stands
    finally:
        doc["OLLAMA_API_CONFIGS"] = {}
        c.run(["curl", "-sf", "-H", f"Authorization: Bearer {tok}", "-H", "Content-Type: application/json", "-d",
               json.dumps(doc), "http://127.0.0.1:3000/ollama/config/update"])



def test_a_changed_node_list_reaches_open_webui(uihost):
    """Open WebUI stores its connections at its first start and ignores OLLAMA_BASE_URLS after:
    localaid writes a changed webui.ollama_urls through the admin API."""
    c = uihost
    c.write("/etc/localaid/conf.d/60-one-node.yaml", f"webui:\n  ollama_urls: [{URLS[0]}]\n")
    c.systemctl("reload", "localaid")
    try:
        # the set-up job rewrites the environment and restarts Open WebUI, which keeps its list
        wait_for(lambda: in_use(c, token(c)) == [True], timeout=60, interval=0.5)
        assert "nodes 1/1 ok" in wait_for(lambda: (t := status(c)) and "nodes 1/1 ok" in t and t, timeout=30)
        assert "nodes-sync open-webui: ok" in c.journal("localaid")
    finally:
        c.run(["rm", "-f", "/etc/localaid/conf.d/60-one-node.yaml"])
        c.systemctl("reload", "localaid")
    wait_for(lambda: in_use(c, token(c)) == [True, True], timeout=30, interval=0.5)


# ----------------------------------------------------------------- an https:// node behind a token
TLS_PORT = 11503
TLS_URL = f"https://127.0.0.1:{TLS_PORT}"
SITE = "/etc/node-c"  # the stand-in node's certificate and key (a GPU node's proxy has its own)


def node_proxy_conf(token: str) -> str:
    """A stand-in for a GPU node's proxy (ollama.expose is test_fleet.py's): Debian's nginx,
    TLS with a certificate the site CA signed, 401 without the bearer token, node a behind it."""
    return (f"pid /run/node-c-nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n"
            f"  server {{\n    listen 127.0.0.1:{TLS_PORT} ssl;\n    ssl_certificate {SITE}/server.crt;\n"
            f"    ssl_certificate_key {SITE}/server.key;\n    location / {{\n"
            f"      if ($http_authorization != \"Bearer {token}\") {{ return 401; }}\n"
            f"      proxy_pass http://127.0.0.1:{NODES['a']};\n      proxy_buffering off;\n    }}\n  }}\n}}\n")


def node_key(c, token: str) -> None:
    """/etc/localaid/tls/nodes/node-c.json as `localaid node add` leaves it (root's 0600)."""
    c.run(["install", "-d", "-m", "0700", "/etc/localaid/tls/nodes"])
    c.write("/etc/localaid/tls/nodes/.node-c.tmp", json.dumps(
        {"name": "node-c", "names": ["node-c", "127.0.0.1"], "token": token, "port": TLS_PORT,
         "not_after": time.time() + 86400, "fingerprint": "-"}), mode=0o600)
    c.run(["mv", "/etc/localaid/tls/nodes/.node-c.tmp", "/etc/localaid/tls/nodes/node-c.json"])


def stored_keys(c, tok: str) -> list:
    doc = json.loads(c.run(["curl", "-sf", "-H", f"Authorization: Bearer {tok}",
                            "http://127.0.0.1:3000/ollama/config"]).stdout)
    return [(doc["OLLAMA_API_CONFIGS"].get(str(i)) or {}).get("key") for i in range(len(doc["OLLAMA_BASE_URLS"]))]


def setup_done(c) -> bool:
    return c.is_active("localaid-webui-setup.service") not in ("active", "activating", "reloading")


def stored_urls(c, tok: str) -> list | None:
    r = c.run(["curl", "-sf", "-H", f"Authorization: Bearer {tok}", "http://127.0.0.1:3000/ollama/config"],
              check=False)
    return json.loads(r.stdout)["OLLAMA_BASE_URLS"] if r.returncode == 0 else None


def test_an_https_node_behind_a_token(uihost):
    """The UI host's side of authenticated GPU nodes: the node's token from its file reaches
    localaid's probes and Open WebUI's connection (`key`), Open WebUI trusts the site CA through
    AIOHTTP_CLIENT_SSL_CERT_FILE, and a refused token or an untrusted certificate takes the node
    out like a node that stopped, with the reason in STATUS, and back once it is accepted."""
    import secrets
    c = uihost
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    c.run(["install", "-d", "-m", "0755", SITE, "/etc/localaid/tls"])
    c.run(["python3", "-c", "import sys, time; from localaid.provision.https import certs; "
           "certs.ensure_ca(sys.argv[1], 'site CA (test_nodes)'); "
           "certs.issue_server(sys.argv[1], ('127.0.0.1',), time.time())", SITE])
    c.run(["cp", f"{SITE}/ca.crt", "/etc/localaid/tls/ca.crt"])
    c.write(f"{SITE}/nginx.conf", node_proxy_conf(first), mode=0o600)
    c.run(["systemd-run", "--unit", "node-c-proxy", "/usr/sbin/nginx", "-c", f"{SITE}/nginx.conf", "-g",
           "daemon off;"])
    node_key(c, first)
    c.write("/etc/localaid/conf.d/60-tls-node.yaml", f"webui:\n  ollama_urls: [{URLS[0]}, {TLS_URL}]\n")
    c.systemctl("reload", "localaid")
    try:
        # the set-up job writes the bundle and the environment, and restarts Open WebUI
        wait_for(lambda: "AIOHTTP_CLIENT_SSL_CERT_FILE=/etc/localaid/tls/ca-bundle.crt\n" in
                 c.read("/etc/localaid/open-webui.env") and setup_done(c), timeout=120, interval=0.5)
        wait_for(lambda: stored_urls(c, token(c)) == [URLS[0], TLS_URL] and in_use(c, token(c)) == [True, True],
                 timeout=90, interval=0.5)
        tok = token(c)
        wait_for(lambda: stored_keys(c, tok) == [None, first] and "nodes 2/2 ok" in status(c), timeout=30)
        bundle = c.read("/etc/localaid/tls/ca-bundle.crt")
        assert bundle.endswith(c.read("/etc/localaid/tls/ca.crt")) and bundle.count("BEGIN CERTIFICATE") > 10
        backends = chats(c, tok, 16)
        assert set(backends) == {URLS[0], TLS_URL}, backends  # through TLS with the key, and plain

        # `localaid node add` again: a new token here, the node still has the old one
        t0 = time.monotonic()
        node_key(c, second)
        line = wait_for(lambda: (t := status(c)) and f"127.0.0.1:{TLS_PORT} out" in t and t, timeout=15, interval=0.2)
        assert "token refused (HTTP 401)" in line, line
        wait_for(lambda: in_use(c, tok) == [True, False], timeout=10, interval=0.2)
        out_after = time.monotonic() - t0
        assert chats(c, tok, 8) == [URLS[0]] * 8
        wait_for(lambda: stored_keys(c, tok) == [None, second], timeout=15)  # the new key written
        t1 = time.monotonic()
        c.write(f"{SITE}/nginx.conf", node_proxy_conf(second), mode=0o600)  # `localaid node join`
        c.run(["/usr/sbin/nginx", "-c", f"{SITE}/nginx.conf", "-s", "reload"])
        wait_for(lambda: in_use(c, tok) == [True, True], timeout=15, interval=0.2)
        back_after = time.monotonic() - t1
        assert set(chats(c, tok, 16)) == {URLS[0], TLS_URL}

        # a certificate the site CA did not sign
        c.run(["python3", "-c", "import sys; from localaid.provision.https import certs; "
               "certs.ensure_ca(sys.argv[1], 'another CA')", "/root/other-ca"])
        c.run(["cp", "/root/other-ca/ca.crt", "/etc/localaid/tls/ca.crt"])
        untrusted = wait_for(lambda: (t := status(c)) and f"127.0.0.1:{TLS_PORT} out" in t and t, timeout=15,
                             interval=0.2)
        assert "certificate not trusted" in untrusted, untrusted
        wait_for(lambda: in_use(c, tok) == [True, False], timeout=10, interval=0.2)
        c.run(["cp", f"{SITE}/ca.crt", "/etc/localaid/tls/ca.crt"])
        wait_for(lambda: in_use(c, tok) == [True, True], timeout=15, interval=0.2)
        print(f"\nhttps node: token refused → out of Open WebUI's use after {out_after:.1f} s, back "
              f"{back_after:.1f} s after the node took the new token; STATUS: {line} / {untrusted}")
        assert out_after <= 10 and back_after <= 10

        # the tokens: on no command line, in no journal, not in the daemon's status file
        cmdlines = c.sh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
        journal = c.journal()
        state = c.read("/run/localaid/status.json")
        for t in (first, second):
            assert t not in cmdlines and t not in journal and t not in state
    finally:
        c.run(["rm", "-f", "/etc/localaid/conf.d/60-tls-node.yaml", "/etc/localaid/tls/nodes/node-c.json",
               "/etc/localaid/tls/ca.crt"])
        c.systemctl("stop", "node-c-proxy", check=False)
        c.systemctl("reload", "localaid")
    wait_for(lambda: stored_urls(c, token(c)) == URLS and in_use(c, token(c)) == [True, True], timeout=60,
             interval=0.5)
    wait_for(lambda: not c.exists("/etc/localaid/tls/ca-bundle.crt") and setup_done(c), timeout=120, interval=0.5)
    assert "AIOHTTP_CLIENT_SSL_CERT_FILE" not in c.read("/etc/localaid/open-webui.env")
    try:
        wait_for(lambda: in_use(c, token(c)) == [True, True] and "nodes 2/2 ok" in status(c), timeout=60,
                 interval=0.5)
    except TimeoutError:
        raise AssertionError(f"{status(c)} / {in_use(c, token(c))} / {c.journal('localaid', lines=30)}") from None
