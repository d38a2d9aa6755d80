"""webui.tls: the keys and what they move, nginx's configuration, the HTTPS proxy as a supervised
service, its probe over TLS, and the set-up job's steps against a fake host."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from types import MappingProxyType

import pytest

import tls_server

from localaid import policy_tls
from localaid.adapters import http
from localaid.config import Config
from localaid.observe_tls import answered
from localaid.provision.https import certs, nginx
from localaid.provision.https import service as https
from localaid.provision.job import JobError
from localaid.provision.webui.layout import Ctx, Layout
from localaid.provision.webui.service import render_env
from localaid.records import HTTPS, Probe, ServiceObs, TlsObs
from tests.unit.test_policy import OK, observe, run, unit


def tls_config(listen=("0.0.0.0", 3000), **tls) -> Config:
    c = Config()
    w = replace(c.webui, host=listen[0], port=listen[1], tls=replace(c.webui.tls, enabled=True, **tls))
    return replace(c, webui=w)


# ------------------------------------------------------------------------------------- keys
def test_tls_moves_open_webui_to_loopback_with_secure_cookies():
    c = tls_config()
    assert c.webui.serve == ("127.0.0.1", 3080)
    assert c.webui.url == "http://127.0.0.1:3080" and c.webui.proxy_url == "https://127.0.0.1:3000"
    assert c.webui.public_url == "https://localhost:3000"
    env = render_env(c, "k", None)
    assert "HOST=127.0.0.1\n" in env and "PORT=3080\n" in env
    assert "WEBUI_SESSION_COOKIE_SECURE=true" in env and "WEBUI_AUTH_COOKIE_SECURE=true" in env
    assert "WEBUI_URL=https://localhost:3000" in env


def test_tls_off_changes_nothing():
    c = Config()
    assert c.webui.serve == ("127.0.0.1", 3000) and c.webui.public_url == "http://localhost:3000"
    env = render_env(c, "k", None)
    assert "PORT=3000\n" in env and "COOKIE_SECURE" not in env and "WEBUI_URL" not in env


# ------------------------------------------------------------------------------------ nginx
def test_nginx_serves_tls_on_listen_and_proxies_to_the_backend():
    conf = nginx.render(tls_config(), local_ca=True)
    assert "listen 0.0.0.0:3000 ssl;" in conf
    assert "upstream open_webui { server 127.0.0.1:3080; keepalive 16; }" in conf
    assert "error_page 497 =301 https://$host:$server_port$request_uri;" in conf
    assert f"ssl_certificate_key {nginx.CREDENTIALS}/server.key;" in conf
    assert "proxy_buffering off;" in conf and "client_max_body_size 0;" in conf
    assert "map $http_upgrade $connection_upgrade { default upgrade; '' ''; }" in conf
    assert "location = /localaid-ca.crt" in conf
    assert "daemon" not in conf  # the unit's -g "daemon off;" must be the only one
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{temp}_temp_path {nginx.CACHE}/" in conf


def test_nginx_listens_dual_stack_on_the_ipv6_wildcard_and_hides_the_ca_for_an_own_pair():
    conf = nginx.render(tls_config(("::", 443), cert_file="/c", key_file="/k"), local_ca=False)
    assert "listen [::]:443 ssl ipv6only=off;" in conf and "localaid-ca.crt" not in conf
    assert https.render_dropin(tls_config(("::", 443))).count("CAP_NET_BIND_SERVICE") == 2
    assert https.render_dropin(tls_config()) == ""


# ------------------------------------------------------------------------------ supervision
def with_proxy(now, probe, state="active"):
    o = observe(now)
    services = dict(o.services)
    services[HTTPS] = ServiceObs(HTTPS, unit("localaid-https.service", state=state), None, probe)
    return replace(o, services=MappingProxyType(services),
                   tls=TlsObs(wall=1e9, not_after=1e9 + 60 * 86400, fingerprint="AB", own=False))


def test_the_proxy_is_a_third_service_in_status():
    c = tls_config()
    d = run(c, [with_proxy(100.0, OK)])[0]
    assert "open-webui ok :3080" in d.status_line and "https ok :3000" in d.status_line and d.healthy


def test_a_502_is_an_answer_the_proxy_gave():
    assert answered(Probe(False, 0.01, 502, "HTTP 502")) == Probe(True, 0.01, 502, None)
    refused = Probe(False, 0.0, None, "connection refused")
    assert answered(refused) is refused


def test_a_hung_proxy_is_kill_restarted():
    c = tls_config()
    hung = Probe(False, 0.5, None, "timeout after 0.5 s")
    obs = [with_proxy(100.0 + i, OK if i < 2 else hung) for i in range(6)]
    acts = [(a.kind, a.target) for d in run(c, obs) for a in d.actions if a.service == HTTPS]
    assert acts == [("kill-restart", "localaid-https.service")]


def test_status_warns_as_the_certificate_ends():
    assert policy_tls.tls_fragment(TlsObs(wall=0.0, not_after=5 * 86400.0)) == "certificate expires in 5 days"
    assert policy_tls.tls_fragment(TlsObs(wall=0.0, not_after=40 * 86400.0)) is None
    assert policy_tls.tls_fragment(TlsObs(wall=0.0, error="no certificate installed yet")) == \
        "no certificate installed yet"
    o = replace(with_proxy(100.0, OK), tls=TlsObs(wall=0.0, not_after=-86400.0))
    d = run(tls_config(), [o])[0]
    assert "https ok :3000 · certificate expired 1 day ago" in d.status_line


# ---------------------------------------------------------------------------- TLS probes
def _serve(cert: str, key: str):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept alive, as nginx does

        def do_GET(self):  # noqa: N802
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass
    return tls_server.serve(H, cert, key)


def test_the_probe_trusts_the_local_ca_and_names_an_untrusted_certificate(tmp_path):
    d = str(tmp_path / "tls")
    certs.ensure_ca(d, "localaid CA test")
    certs.issue_server(d, ("localhost", "127.0.0.1"), time.time())
    srv = _serve(f"{d}/server.crt", f"{d}/server.key")
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/health"
        probe, _ = http.request(url, 2.0, tls=http.tls_context(f"{d}/ca.crt"))
        assert probe.status == 502 and answered(probe).ok
        client = http.Client(url, tls=http.tls_context(f"{d}/ca.crt"))
        assert client.request(2.0)[0].status == 502 and client.request(2.0)[0].status == 502
        assert client.connects == 1  # kept alive over TLS: no handshake a cycle
        client.close()
        refused, _ = http.request(url, 2.0)  # the system's CAs do not know this one
        assert refused.status is None and refused.error.startswith("certificate not trusted: ")
        unchecked, _ = http.request(url, 2.0, tls=http.tls_context(verify=False))
        assert unchecked.status == 502
    finally:
        srv.shutdown()


# ------------------------------------------------------------------------- the set-up job
class FakeHost:
    def __init__(self):
        self.calls, self.states = [], {}

    def unit_state(self, unit):
        return type("S", (), {"active_state": self.states.get(unit, "inactive"), "job": None})()

    def __getattr__(self, name):
        if name in ("enable", "start", "restart", "stop", "disable", "daemon_reload"):
            return lambda *a: self.calls.append((name, *a))
        raise AttributeError(name)

    def get(self, url, timeout=2.0):
        self.calls.append(("get", url))
        return 200, None

    def monotonic(self):
        return time.monotonic()

    def sleep(self, s):
        pass


def test_the_job_refuses_without_nginx_for_the_administrator(tmp_path):
    ctx = Ctx(tls_config(), Layout(root=str(tmp_path)), FakeHost())
    with pytest.raises(JobError) as e:
        https.start(ctx)
    assert "apt install nginx" in str(e.value) and e.value.blocked


def test_the_job_issues_a_certificate_once_and_describes_it(tmp_path):
    """The local CA's certificate through the job's own step: made, described for the daemon,
    kept on the next run, issued again when the names change."""
    ctx = Ctx(tls_config(), Layout(root=str(tmp_path)), FakeHost())
    first = https.certificate(ctx, time.time())
    described = json.loads((tmp_path / "var/lib/localaid/https/certificate.json").read_text())
    assert described["fingerprint"] == first.fingerprint and described["source"] == "local-ca"
    assert described["ca_fingerprint"] == certs.read_cert(str(tmp_path / "etc/localaid/tls/ca.crt")).fingerprint
    assert {"localhost", "127.0.0.1"} <= set(first.names)
    assert https.certificate(ctx, time.time()).fingerprint == first.fingerprint
    renamed = Ctx(tls_config(names=("chat.example.lan",)), Layout(root=str(tmp_path)), FakeHost())
    again = https.certificate(renamed, time.time())
    assert again.fingerprint != first.fingerprint and "chat.example.lan" in again.names
