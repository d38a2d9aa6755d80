"""A UI host's https:// GPU nodes: probed with the site CA trusted and the node's token sent (a
node double that is as strict as the node's nginx: TLS with a certificate the site CA signed,
401 without the token); Open WebUI's stored connections get each token as their `key`."""

import dataclasses
import json
import os
import time
from http.server import BaseHTTPRequestHandler
import ssl

import pytest

import tls_server

from localaid import nodekeys
from localaid.adapters import http
from localaid.adapters.webui_admin import MARK, WebUIAdmin
from localaid.observe_nodes import NodeTrust, differ
from localaid.provision.https import certs

TOKEN = "tok_" + "x" * 39
OTHER = "old_" + "y" * 39


def _node(cert: str, key: str, token: str, seen: list):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == f"Bearer {token}"
            body = json.dumps({"version": "0.12.0", "message": {"content": "hello"},
                               "models": [{"name": "llama3:latest"}]} if ok
                              else {"error": "unauthorized"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802  /api/chat, for the fake Open WebUI
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

        def log_message(self, *a):
            pass
    return tls_server.serve(H, cert, key)


def _key_file(tls: str, name: str, token: str, names) -> None:
    os.makedirs(f"{tls}/nodes", mode=0o700, exist_ok=True)
    path = f"{tls}/nodes/{name}.json"
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps({"name": name, "names": list(names), "token": token, "port": 11443}).encode())
    os.close(fd)
    os.rename(path + ".tmp", path)


@pytest.fixture
def site(tmp_path):
    """A UI host's /etc/localaid/tls: the site CA; a node certificate it signed, served."""
    tls = str(tmp_path / "tls")
    certs.ensure_ca(tls, "localaid site CA (test)")
    certs.issue_server(tls, ("localhost", "127.0.0.1"), time.time())
    seen: list = []
    srv = _node(f"{tls}/server.crt", f"{tls}/server.key", TOKEN, seen)
    yield tls, f"https://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()


def probe(trust: NodeTrust, url: str):
    tls, headers = trust.probe_args(url)
    return http.Client(url + "/api/version", tls=tls, headers=headers).request(2.0)[0]


def test_a_node_is_probed_with_the_site_ca_and_its_token(site):
    tls, url, seen = site
    trust = NodeTrust(tls)
    trust.refresh()
    assert probe(trust, url).status == 401  # no token file yet: the node refuses
    assert seen == [None]
    _key_file(tls, "gpu-a", TOKEN, ["gpu-a", "127.0.0.1"])
    trust.refresh()
    p = probe(trust, url)
    assert p.ok and p.status == 200 and seen[-1] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(p)  # nothing of the token in what the policy and STATUS see


def test_a_node_added_again_has_a_new_token_and_the_old_one_is_refused(site):
    tls, url, _ = site
    _key_file(tls, "gpu-a", OTHER, ["127.0.0.1"])
    trust = NodeTrust(tls)
    trust.refresh()
    assert probe(trust, url).status == 401
    _key_file(tls, "gpu-a", TOKEN, ["127.0.0.1"])
    trust.refresh()
    assert probe(trust, url).ok


def test_a_certificate_the_site_ca_did_not_sign_is_not_trusted(site, tmp_path):
    tls, url, _ = site
    _key_file(tls, "gpu-a", TOKEN, ["127.0.0.1"])
    other = str(tmp_path / "other")
    certs.ensure_ca(other, "another site's CA")
    trust = NodeTrust(other)  # this host's site CA is another one: the node's chain is unknown
    trust.keys = nodekeys.load(tls)
    p = probe(trust, url)
    assert not p.ok and p.status is None and p.error.startswith("certificate not trusted: ")


def test_plain_http_nodes_get_no_tls_and_no_token(site):
    tls, _, _ = site
    _key_file(tls, "gpu-a", TOKEN, ["gpu-a"])
    trust = NodeTrust(tls)
    trust.refresh()
    assert trust.probe_args("http://gpu-a:11434") == (None, None)
    ctx, headers = trust.probe_args("https://gpu-a:11443")
    assert isinstance(ctx, ssl.SSLContext) and headers == {"Authorization": f"Bearer {TOKEN}"}


def test_open_webuis_connections_differ_when_a_key_is_not_the_token():
    urls = ("https://gpu-a:11443", "http://gpu-b:11434")
    tokens = {"https://gpu-a:11443": TOKEN}
    assert not differ(urls, None, tokens)  # not read yet
    assert not differ(urls, {"https://gpu-a:11443": (True, False, TOKEN), "http://gpu-b:11434": (True, False, None)},
                      tokens)
    assert differ(urls, {"https://gpu-a:11443": (True, False, OTHER), "http://gpu-b:11434": (True, False, None)},
                  tokens)
    assert differ(urls, {"https://gpu-a:11443": (True, False, None), "http://gpu-b:11434": (True, False, None)},
                  tokens)
    assert differ(urls, {"http://gpu-b:11434": (True, False, None)}, tokens)  # another list


class FakeAdmin(WebUIAdmin):
    """Open WebUI's /ollama/config as 0.12 keeps it (routers/ollama.py): configs by index."""

    def __init__(self, doc):
        super().__init__("http://127.0.0.1:3000", "admin@localhost", "/nonexistent")
        self.doc, self.posted = doc, []

    def _call(self, method, path, body=None):
        assert path.startswith("/ollama/config")
        if method == "POST":
            n = len(body["OLLAMA_BASE_URLS"])
            self.doc = {**body, "OLLAMA_API_CONFIGS": {k: v for k, v in body["OLLAMA_API_CONFIGS"].items()
                                                       if k in {str(i) for i in range(n)}}}
            self.posted.append(body)
        return json.loads(json.dumps(self.doc))


def test_sync_writes_each_tokens_key_and_keeps_the_enable_flags():
    a, b, c = "https://gpu-a:11443", "https://gpu-b:11443", "http://gpu-c:11434"
    admin = FakeAdmin({"ENABLE_OLLAMA_API": True, "OLLAMA_BASE_URLS": [b, c],
                       "OLLAMA_API_CONFIGS": {"0": {"enable": False, MARK: "switched off", "key": OTHER},
                                              "1": {"enable": True, "prefix_id": "c"}}})
    admin.sync((a, b, c), {a: TOKEN, b: TOKEN + "b"})
    configs = admin.doc["OLLAMA_API_CONFIGS"]
    assert admin.doc["OLLAMA_BASE_URLS"] == [a, b, c]
    assert configs["0"] == {"key": TOKEN}
    assert configs["1"] == {"enable": False, MARK: "switched off", "key": TOKEN + "b"}  # its flag kept, new key
    assert configs["2"] == {"enable": True, "prefix_id": "c"}  # plain HTTP: no key
    got = admin.connections()
    assert got == {a: (True, False, TOKEN), b: (False, True, TOKEN + "b"), c: (True, False, None)}
    assert not differ((a, b, c), got, {a: TOKEN, b: TOKEN + "b"})


def test_sync_without_tokens_is_as_before():
    a, b = "http://gpu-a:11434", "http://gpu-b:11434"
    admin = FakeAdmin({"ENABLE_OLLAMA_API": True, "OLLAMA_BASE_URLS": [b],
                       "OLLAMA_API_CONFIGS": {"0": {"enable": False}}})
    admin.sync((a, b))
    assert admin.doc["OLLAMA_API_CONFIGS"] == {"1": {"enable": False}}


# ------------------------------------------------ Open WebUI's trust: AIOHTTP_CLIENT_SSL_CERT_FILE
from test_webui_upgrade import FakeHost, config, provision  # noqa: E402
from localaid import paths  # noqa: E402
from localaid.provision import webui  # noqa: E402

SYSTEM_CAS = "-----BEGIN CERTIFICATE-----\nU1lTVEVN\n-----END CERTIFICATE-----\n"


@pytest.fixture
def uihost(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "run/localaid/progress"))
    layout = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    os.makedirs(layout.p("/etc/ssl/certs"))
    with open(layout.p(nodekeys.SYSTEM_BUNDLE), "w") as f:
        f.write(SYSTEM_CAS)
    return layout, FakeHost(layout)


def env_of(layout) -> dict:
    with open(layout.env_file) as f:
        return dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line and not line.startswith("#"))


def test_open_webui_trusts_the_system_cas_and_the_site_ca_for_https_nodes(uihost):
    layout, host = uihost
    nodes = ("https://gpu-a:11443", "http://gpu-b:11434")
    assert provision(layout, host, config(ollama_urls=nodes)) == 0
    bundle = layout.p(nodekeys.CA_BUNDLE)
    assert not os.path.exists(bundle) and "AIOHTTP_CLIENT_SSL_CERT_FILE" not in env_of(layout)  # no site CA yet
    certs.ensure_ca(layout.p(paths.TLS_DIR), "localaid site CA (test)")
    site = open(layout.p(nodekeys.SITE_CA)).read()
    host.calls.clear()
    assert provision(layout, host, config(ollama_urls=nodes)) == 0
    assert env_of(layout)["AIOHTTP_CLIENT_SSL_CERT_FILE"] == nodekeys.CA_BUNDLE == "/etc/localaid/tls/ca-bundle.crt"
    text = open(bundle).read()
    assert text.startswith(SYSTEM_CAS) and text.endswith(site)  # it replaces the default bundle: both in it
    assert oct(os.stat(bundle).st_mode & 0o777) == "0o644"  # Open WebUI's user reads it
    assert ("start", "0.12.4") in host.calls  # restarted to read it

    host.calls.clear()
    assert provision(layout, host, config(ollama_urls=nodes)) == 0
    assert [c for c in host.calls if c[0] in ("start", "stop")] == []  # nothing changed: no restart

    with open(layout.p(nodekeys.SYSTEM_BUNDLE), "a") as f:  # ca-certificates upgraded
        f.write(SYSTEM_CAS)
    assert provision(layout, host, config(ollama_urls=nodes)) == 0
    assert open(bundle).read().startswith(SYSTEM_CAS * 2) and ("start", "0.12.4") in host.calls


def test_no_https_node_no_bundle(uihost):
    layout, host = uihost
    certs.ensure_ca(layout.p(paths.TLS_DIR), "localaid site CA (test)")
    assert provision(layout, host, config(ollama_urls=("https://gpu-a:11443",))) == 0
    assert os.path.exists(layout.p(nodekeys.CA_BUNDLE))
    assert provision(layout, host, config(ollama_urls=("http://gpu-a:11434",))) == 0  # back to plain HTTP
    assert not os.path.exists(layout.p(nodekeys.CA_BUNDLE))
    assert "AIOHTTP_CLIENT_SSL_CERT_FILE" not in env_of(layout)


def test_documents_are_embedded_through_the_first_node_with_its_token(uihost):
    """Open WebUI's embedding connection (its own `key`, routers/retrieval.py) gets the node's
    token too, and a new token is written again."""
    from localaid.config import Config
    import dataclasses
    layout, host = uihost
    tls = layout.p(paths.TLS_DIR)
    certs.ensure_ca(tls, "localaid site CA (test)")
    _key_file(tls, "gpu-a", OTHER, ["gpu-a"])
    c = config(ollama_urls=("https://gpu-a:11443",))
    c = dataclasses.replace(c, ollama=dataclasses.replace(Config().ollama, enabled=False),
                            webui=dataclasses.replace(c.webui, embedding=dataclasses.replace(c.webui.embedding,
                                                                                             engine="ollama")))
    assert provision(layout, host, c) == 0
    assert host.admin.updates[-1] == ("ollama", c.webui.embedding.model_name, "https://gpu-a:11443", OTHER)
    _key_file(tls, "gpu-a", TOKEN, ["gpu-a"])  # `localaid node add gpu-a …` again: a new token
    assert provision(layout, host, c) == 0
    assert host.admin.updates[-1][-1] == TOKEN and len(host.admin.updates) == 2
    assert provision(layout, host, c) == 0
    assert len(host.admin.updates) == 2  # as configured: nothing written


# ------------------------------------- the fake Open WebUI reaches its nodes as the real one does
@pytest.fixture
def fake_webui(tmp_path, monkeypatch):
    import sys
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "fakes", "open_webui"))
    for m in [m for m in sys.modules if m == "open_webui" or m.startswith("open_webui.")]:
        monkeypatch.delitem(sys.modules, m)
    import open_webui
    from open_webui import connections
    db = open_webui.DB(tmp_path / "webui.db")
    db.migrate({})
    return connections, db


def test_the_fake_open_webui_sends_the_key_and_trusts_only_its_bundle(site, fake_webui, monkeypatch):
    connections, db = fake_webui
    tls, url, seen = site
    db.set_config("ollama.base_urls", json.dumps([url]))
    db.set_config("ollama.api_configs", json.dumps({"0": {"enable": True}}))
    monkeypatch.setenv("AIOHTTP_CLIENT_SSL_CERT_FILE", f"{tls}/ca.crt")
    monkeypatch.setattr(connections, "_SSL", [])
    status, doc = connections.chat(db, {"model": "m", "messages": []})
    assert status == 500 and "HTTP 401" in doc["detail"] and seen[-1] is None  # no key: refused by the node
    db.set_config("ollama.api_configs", json.dumps({"0": {"enable": True, "key": TOKEN}}))
    status, doc = connections.chat(db, {"model": "m", "messages": []})
    assert status == 200 and seen[-1] == f"Bearer {TOKEN}" and doc["choices"][0]["message"]["content"] == "hello"
    monkeypatch.delenv("AIOHTTP_CLIENT_SSL_CERT_FILE")  # the default bundle: the site CA unknown
    monkeypatch.setattr(connections, "_SSL", [])
    status, doc = connections.chat(db, {"model": "m", "messages": []})
    assert status == 500 and "CERTIFICATE_VERIFY_FAILED" in doc["detail"]


# ------------------------------------------------------------------------------------ doctor
def doctor(urls, tls, client_for=None):
    from localaid.config import Config
    from localaid.provision.webui.nodes import node_checks
    c = Config()
    c = dataclasses.replace(c, ollama=dataclasses.replace(c.ollama, enabled=False),
                            webui=dataclasses.replace(c.webui, ollama_urls=tuple(urls)))
    return {ch.name: ch for ch in node_checks(c, client_for, tls_dir=tls)}


def test_doctor_reaches_an_https_node_with_the_site_ca_and_its_token(site):
    tls, url, seen = site
    node = f"node 127.0.0.1:{url.rsplit(':', 1)[1]}"
    got = doctor([url], tls)
    assert got[node + " token"].ok is False and "localaid node add NAME ADDR" in got[node + " token"].advice
    assert got[node].ok is False and got[node].message.endswith("token refused (HTTP 401)")
    _key_file(tls, "gpu-a", TOKEN, ["127.0.0.1"])
    got = doctor([url], tls)
    assert got[node].ok is True and got[node].message.endswith("answers, 1 models") and seen[-1] == f"Bearer {TOKEN}"
    assert node + " token" not in got


def test_doctor_names_an_untrusted_node_and_a_refused_token_file(site, tmp_path):
    tls, url, _ = site
    other = str(tmp_path / "other")
    certs.ensure_ca(other, "another site's CA")
    _key_file(other, "gpu-a", TOKEN, ["127.0.0.1"])
    _key_file(other, "gpu-b", TOKEN, ["gpu-b"])
    os.chmod(f"{other}/nodes/gpu-b.json", 0o644)
    got = doctor([url], other)
    n = got[f"node 127.0.0.1:{url.rsplit(':', 1)[1]}"]
    assert n.ok is False and "certificate not trusted" in n.message and "site CA" in n.advice
    assert got["node token files"].ok is False and "gpu-b.json is open to others" in got["node token files"].message


def test_doctor_warns_of_plain_http_nodes_on_the_network(tmp_path):
    from localaid.adapters.ollama import OllamaError

    class Down:
        def __init__(self, url):
            raise OllamaError("cannot connect: Connection refused")
    got = doctor(["http://192.168.1.21:1", "http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"],
                 str(tmp_path), Down)
    warn = got["node 192.168.1.21:1 transport"]
    assert warn.ok is None and "clear text, no token" in warn.message and "localaid node add" in warn.advice
    assert [k for k in got if k.endswith("transport")] == ["node 192.168.1.21:1 transport"]  # loopback: fine
