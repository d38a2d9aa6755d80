"""The premise of the HTTPS page test, on the host alone (no container, a few seconds).

A browser gives a page a secure context (microphone, voice: ``navigator.mediaDevices``)
only over HTTPS with a certificate it trusts, or over plain HTTP on loopback. Here real
Chromium (Debian's package), a real TLS server (Python's ssl) on the host's non-loopback
address and a throw-away CA (EC P-256) check the three cases the real test relies on:
HTTPS with the CA trusted -> secure; plain HTTP on the LAN address -> not secure; HTTPS
with the CA not trusted -> the navigation fails with a certificate error.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from browser import ARTEFACTS, Browser, NavigationError  # noqa: E402

PAGE = (b"<!doctype html><title>localaid browser check</title>"
        b"<body style='background:#1b5e20;color:white'><h1 id=probe>secure context?</h1>"
        b"<script>probe.textContent = 'secure context: ' + isSecureContext"
        b" + ', mediaDevices: ' + typeof navigator.mediaDevices</script>")


def _lan_ipv4() -> str | None:
    """The first global-scope IPv4 address of this machine (not loopback), or None."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


LAN_IP = _lan_ipv4()
MISSING = browser.available()
pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=str(MISSING)),
    pytest.mark.skipif(LAN_IP is None, reason="this machine has no non-loopback IPv4 address"),
]


# --------------------------------------------------------------------------- certificates
def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _signed(builder, key, issuer_key):
    from cryptography.hazmat.primitives import hashes
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = builder.not_valid_before(now - datetime.timedelta(minutes=5))
    builder = builder.not_valid_after(now + datetime.timedelta(days=2))
    serial = int.from_bytes(os.urandom(16), "big") >> 1
    builder = builder.public_key(key.public_key()).serial_number(serial)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(**allowed):
    from cryptography import x509
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: allowed.get(n, False) for n in names})


def make_ca():
    """A CA key and self-signed certificate, as a site CA would be."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name("localaid test CA"))
               .issuer_name(_name("localaid test CA"))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    return key, _signed(builder, key, key)


def make_server_cert(ca_key, ca_cert, ips: list[str], dns: list[str]):
    """A server key and certificate for these addresses and names, signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
    builder = (x509.CertificateBuilder().subject_name(_name(ips[0]))
               .issuer_name(ca_cert.subject)
               .add_extension(x509.SubjectAlternativeName(san), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(digital_signature=True), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    return key, _signed(builder, key, ca_key)


def _pem(obj) -> bytes:
    from cryptography.hazmat.primitives import serialization
    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """ca.pem, server.pem, server.key in a private directory."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = make_ca()
    key, cert = make_server_cert(ca_key, ca_cert, [LAN_IP, "127.0.0.1"], ["localhost"])
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    files["ca"].write_bytes(_pem(ca_cert))
    files["cert"].write_bytes(_pem(cert))
    files["key"].touch(mode=0o600)
    files["key"].write_bytes(_pem(key))
    return files


# --------------------------------------------------------------------------- servers
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


def _serve(tls: ssl.SSLContext | None, address: str):
    server = ThreadingHTTPServer((address, 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def urls(pki):
    """The same page on the LAN address over HTTPS and HTTP, and over HTTP on loopback."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki["cert"], pki["key"])
    servers = {"https": _serve(tls, LAN_IP), "http": _serve(None, LAN_IP),
               "loopback": _serve(None, "127.0.0.1")}
    yield {name: f"{'https' if name == 'https' else 'http'}://{s.server_address[0]}:"
                 f"{s.server_address[1]}/" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- tests
def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose chunks all pass their CRC and which ends in IEND."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", [k for k, _ in chunks]
    assert any(kind == b"IDAT" for kind, _ in chunks), "no image data"
    return struct.unpack(">II", chunks[0][1][:8])


def test_https_with_trusted_ca_is_a_secure_context(pki, urls, tmp_path):
    with Browser(trust_ca=pki["ca"], workdir=tmp_path / "trusted") as b:
        page = b.open(urls["https"])
        assert page.url == urls["https"]
        assert page.eval("document.title") == "localaid browser check"
        assert page.eval("window.isSecureContext") is True
        assert page.eval("typeof navigator.mediaDevices") == "object"
        assert page.eval("typeof navigator.mediaDevices.getUserMedia") == "function"
        viewport = page.eval("[innerWidth * devicePixelRatio, innerHeight * devicePixelRatio]")
        shot = page.screenshot(ARTEFACTS / "browser-context-https.png")
    assert list(png_size(shot.read_bytes())) == viewport


def test_plain_http_on_a_lan_address_is_not_a_secure_context(urls, tmp_path):
    with Browser(workdir=tmp_path / "plain") as b:
        page = b.open(urls["http"])
        assert page.eval("document.title") == "localaid browser check"
        assert page.eval("window.isSecureContext") is False
        assert page.eval("'mediaDevices' in navigator") is False
        assert page.eval("typeof navigator.mediaDevices") == "undefined"


def test_plain_http_on_loopback_is_a_secure_context(urls, tmp_path):
    """Why the plain-HTTP case must use a LAN address: loopback counts as trustworthy."""
    with Browser(workdir=tmp_path / "loopback") as b:
        page = b.open(urls["loopback"])
        assert page.eval("window.isSecureContext") is True
        assert page.eval("typeof navigator.mediaDevices") == "object"


def test_https_with_an_untrusted_ca_fails_with_a_certificate_error(urls, tmp_path):
    with Browser(workdir=tmp_path / "untrusted") as b:
        with pytest.raises(NavigationError) as err:
            b.open(urls["https"])
    assert err.value.error == "net::ERR_CERT_AUTHORITY_INVALID", err.value


def test_a_refused_connection_is_a_navigation_error(tmp_path):
    with socket.socket() as sock:
        sock.bind((LAN_IP, 0))
        url = f"http://{LAN_IP}:{sock.getsockname()[1]}/"  # bound, never listening
        with Browser(workdir=tmp_path / "refused") as b:
            with pytest.raises(NavigationError) as err:
                b.open(url, timeout=10)
    assert err.value.error == "net::ERR_CONNECTION_REFUSED", err.value
    assert err.value.url == url
