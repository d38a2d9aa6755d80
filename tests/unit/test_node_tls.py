"""A UI host's https:// GPU nodes: probed with the site CA trusted and the node's token sent (a
node double that is as strict as the node's nginx: TLS with a certificate the site CA signed,
401 without the token); Open WebUI's stored connections get each token as their `key`."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
import ssl

import pytest

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
            body = json.dumps({"version": "0.12.0"} if ok else {"error": "unauthorized"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = HTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


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
