"""GPU nodes behind TLS and a token: `localaid node add` on the UI host, `localaid node join` on
the node, and the nginx configuration and drop-in ollama.expose gets."""

from __future__ import annotations

import json
import os
import ssl
import stat
from dataclasses import replace
from types import SimpleNamespace

import pytest

from localaid.config import Config
from localaid.provision.https import certs, nginx, nodejoin
from localaid.provision.https import service as https


def node_config(expose="0.0.0.0:11443", allow_from=()) -> Config:
    c = Config()
    o = replace(c.ollama, expose=expose, allow_from=tuple(allow_from))
    return replace(c, ollama=o, webui=replace(c.webui, enabled=False))


def add(tmp_path, name="gpu-a", addresses=("192.168.1.21",)):
    ui = str(tmp_path / "ui-tls")
    bundle = str(tmp_path / f"{name}.localaid-node")
    args = SimpleNamespace(name=name, addresses=list(addresses), port=11443, output=bundle)
    assert nodejoin.add_main(args, Config(), tls_dir=ui, out=open(os.devnull, "w")) == 0
    return ui, bundle


def test_add_writes_a_private_bundle_and_keeps_the_token(tmp_path):
    ui, bundle = add(tmp_path)
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600
    doc = json.loads(open(bundle).read())
    kept = json.loads(open(f"{ui}/nodes/gpu-a.json").read())
    assert stat.S_IMODE(os.stat(f"{ui}/nodes/gpu-a.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(f"{ui}/nodes").st_mode) == 0o700
    assert doc["token"] == kept["token"] and len(doc["token"]) >= 40
    assert kept["names"] == ["gpu-a", "192.168.1.21", "localhost", "127.0.0.1", "::1"]
    assert 729 * 86400 < kept["not_after"] - os.path.getmtime(bundle) <= 730 * 86400
    # a second add never overwrites the bundle left behind
    args = SimpleNamespace(name="gpu-a", addresses=["192.168.1.21"], port=11443, output=bundle)
    assert nodejoin.add_main(args, Config(), tls_dir=ui, out=open(os.devnull, "w")) == 1


def test_a_bad_name_is_refused(tmp_path):
    with pytest.raises(nodejoin.NodeError):
        nodejoin.node_names("gpu a", [])


def test_join_installs_a_pair_the_site_ca_verifies(tmp_path):
    ui, bundle = add(tmp_path)
    node = str(tmp_path / "node-tls")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    info = nodejoin.install(node, nodejoin.read_bundle(bundle), bundle)
    assert "192.168.1.21" in info.names
    for name, mode in (("server.key", 0o600), ("node-token.map", 0o600), ("node.json", 0o600),
                       ("server.crt", 0o644), ("ca.crt", 0o644)):
        assert stat.S_IMODE(os.stat(f"{node}/{name}").st_mode) == mode, name
    token = json.loads(open(bundle).read())["token"]
    assert open(f"{node}/node-token.map").read() == f'"Bearer {token}" 1;\n'
    assert not os.path.exists(f"{node}/ca.key")  # the CA's key stays on the UI host
    ctx = ssl.create_default_context(cafile=f"{ui}/ca.crt")
    ctx.load_cert_chain(f"{node}/server.crt", f"{node}/server.key")  # the key is the certificate's
    assert certs.read_cert(f"{node}/ca.crt").fingerprint == certs.read_cert(f"{ui}/ca.crt").fingerprint
    assert nodejoin._configure(11443, str(conf_d)) == f"wrote {conf_d}/50-node.yaml"
    assert 'expose: "0.0.0.0:11443"' in (conf_d / "50-node.yaml").read_text()
    assert nodejoin._configure(11443, str(conf_d)).endswith('set ollama.expose there (e.g. "0.0.0.0:11443")')


def test_join_refuses_a_readable_or_tampered_bundle(tmp_path):
    ui, bundle = add(tmp_path)
    os.chmod(bundle, 0o644)
    with pytest.raises(nodejoin.NodeError, match="chmod 600"):
        nodejoin.read_bundle(bundle)
    os.chmod(bundle, 0o600)
    doc = nodejoin.read_bundle(bundle)
    other, other_bundle = add(tmp_path / "elsewhere")
    doc["ca"] = json.loads(open(other_bundle).read())["ca"]  # a CA that did not sign it
    with pytest.raises(nodejoin.NodeError, match="not signed by its CA"):
        nodejoin.install(str(tmp_path / "node-tls"), doc, bundle)


def test_join_is_refused_on_a_ui_host(tmp_path, capsys):
    ui, bundle = add(tmp_path)
    args = SimpleNamespace(bundle=bundle, conf_d=str(tmp_path))
    assert nodejoin.join_main(args, Config(), tls_dir=ui) == 1
    assert "UI host" in capsys.readouterr().err


def test_nginx_serves_ollama_only_with_the_token():
    conf = nginx.render(node_config(), local_ca=False)
    assert "listen 0.0.0.0:11443 ssl;" in conf and "upstream ollama { server 127.0.0.1:11434; keepalive 8; }" in conf
    assert f"map $http_authorization $node_token_ok {{ default 0; include {nginx.CREDENTIALS}/token.map; }}" in conf
    assert "if ($node_token_ok = 0) { return 401; }" in conf
    assert "proxy_set_header Authorization '';" in conf  # the token stops at the proxy
    assert "open_webui" not in conf


def test_the_node_proxy_unit_gets_the_token_and_allow_from():
    dropin = https.render_dropin(node_config(allow_from=("192.168.1.10",)))
    assert "LoadCredential=token.map:/etc/localaid/tls/node-token.map" in dropin
    assert "IPAddressAllow=localhost 192.168.1.10\nIPAddressDeny=any\n" in dropin
    assert "CAP_NET_BIND_SERVICE" not in dropin
    assert "CAP_NET_BIND_SERVICE" in https.render_dropin(node_config("0.0.0.0:443"))


def test_the_proxy_probe_follows_the_role():
    assert node_config().proxy_probe == "https://127.0.0.1:11443/api/version"
    assert Config().proxy_probe is None
    assert https.source(node_config()) == "node" and https.wanted(node_config())
