"""The certificate files of `webui.tls` (provision/https/certs.py), made with the real
python3-cryptography in temporary directories, and checked three ways: their signatures with
cryptography, the chain with `openssl verify`, and a real TLS handshake with Python's ssl module
trusting only the local CA. Runs as root, as localaid does (the files must be root's)."""

import ast
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from localaid import policy_tls
from localaid.provision.https import certs
from localaid.provision.https.certs import CertError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the TLS directory and its files must be root's")

NAMES = ("gpu-box", "gpu-box.local", "192.168.1.5", "localhost", "127.0.0.1", "::1")


@pytest.fixture
def tls(tmp_path):
    """A TLS directory with a local CA and a server certificate for NAMES."""
    d = str(tmp_path / "tls")
    certs.ensure_ca(d, "localaid CA gpu-box")
    certs.issue_server(d, NAMES, time.time())
    return d


def load(path, n=0):
    with open(path, "rb") as f:
        pem = f.read()
    blocks = pem.split(b"-----END CERTIFICATE-----")[:-1]
    return x509.load_pem_x509_certificate(blocks[n] + b"-----END CERTIFICATE-----\n")


def mode(path):
    st = os.lstat(path)
    return oct(st.st_mode & 0o7777), st.st_uid


def other_key_pem():
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write(path, data, perm=0o600):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, perm)


# --- the local CA ----------------------------------------------------------------------------------

def test_a_new_ca_is_an_ec_p256_ca_for_ten_years_with_root_only_key(tmp_path):
    d = str(tmp_path / "etc" / "tls")
    info, created = certs.ensure_ca(d, "localaid CA gpu-box")
    assert created and info.is_ca and info.subject == info.issuer == "CN=localaid CA gpu-box"
    assert mode(d) == ("0o755", 0) and mode(f"{d}/ca.key") == ("0o600", 0) and mode(f"{d}/ca.crt") == ("0o644", 0)
    cert = load(f"{d}/ca.crt")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    years = (info.not_after - info.not_before) / (365.25 * 86400)
    assert 9.9 < years < 10.1 and info.not_before <= time.time() - 59
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert sorted(os.listdir(d)) == ["ca.crt", "ca.key"]  # no temporary file left


def test_an_existing_ca_is_kept(tmp_path):
    d = str(tmp_path / "tls")
    first, _ = certs.ensure_ca(d, "localaid CA a")
    again, created = certs.ensure_ca(d, "localaid CA b")
    assert not created and again == first


def test_a_ca_key_that_does_not_match_its_certificate_is_an_error_not_a_new_ca(tmp_path):
    d = str(tmp_path / "tls")
    first, _ = certs.ensure_ca(d, "localaid CA a")
    write(f"{d}/ca.key", other_key_pem())
    with pytest.raises(CertError) as e:
        certs.ensure_ca(d, "localaid CA a")
    assert e.value.path == f"{d}/ca.key" and "does not match the certificate" in e.value.reason
    assert certs.read_cert(f"{d}/ca.crt") == first


def test_a_ca_certificate_without_its_key_is_an_error(tmp_path):
    d = str(tmp_path / "tls")
    certs.ensure_ca(d, "localaid CA a")
    os.unlink(f"{d}/ca.key")
    with pytest.raises(CertError, match="ca.key: is missing while ca.crt exists"):
        certs.ensure_ca(d, "localaid CA a")
    with pytest.raises(CertError, match="ca.key: is missing"):
        certs.issue_server(d, NAMES, time.time())


def test_a_ca_key_left_by_a_cut_short_creation_is_used(tmp_path):
    d = str(tmp_path / "tls")
    os.mkdir(d, 0o755)
    key = other_key_pem()
    write(f"{d}/ca.key", key)
    _info, created = certs.ensure_ca(d, "localaid CA a")
    pub = serialization.load_pem_private_key(key, None).public_key().public_numbers()
    assert created and load(f"{d}/ca.crt").public_key().public_numbers() == pub


# --- server certificates ------------------------------------------------------------------------------

def test_a_server_certificate_carries_the_names_and_is_signed_by_the_ca(tls):
    leaf, ca = load(f"{tls}/server.crt", 0), load(f"{tls}/server.crt", 1)
    assert ca == load(f"{tls}/ca.crt")  # the chain: the leaf, then the CA
    ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    info = certs.read_cert(f"{tls}/server.crt")
    assert info.names == NAMES and not info.is_ca and info.issuer == "CN=localaid CA gpu-box"
    assert info.subject == "CN=gpu-box"
    assert info.not_after - info.not_before == policy_tls.LIFETIME
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert info.fingerprint == ":".join(f"{b:02X}" for b in leaf.fingerprint(hashes.SHA256()))
    assert mode(f"{tls}/server.key") == ("0o600", 0) and mode(f"{tls}/server.crt") == ("0o644", 0)
    assert certs.ca_matches(tls, info) and certs.pair_matches(tls)
    assert sorted(os.listdir(tls)) == ["ca.crt", "ca.key", "server.crt", "server.key"]


def test_openssl_verifies_the_chain_the_names_and_the_purpose(tls):
    def verify(*extra):
        return subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile",
                               f"{tls}/ca.crt", *extra, f"{tls}/server.crt"], capture_output=True, text=True)
    for extra in ((), ("-verify_hostname", "localhost"), ("-verify_hostname", "gpu-box.local"),
                  ("-verify_ip", "127.0.0.1"), ("-verify_ip", "::1"), ("-verify_ip", "192.168.1.5")):
        r = verify(*extra)
        assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), (extra, r.stdout, r.stderr)
    assert verify("-verify_hostname", "other.example").returncode != 0
    assert verify("-verify_ip", "10.9.9.9").returncode != 0


def _handshake(tls, cafile, server_hostname, host="127.0.0.1"):
    """Serve one TLS connection with the directory's pair; connect trusting only `cafile`.
    → the byte the server sent, or the client's exception."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(f"{tls}/server.crt", f"{tls}/server.key")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as lsock:
        lsock.bind((host, 0))
        lsock.listen(1)
        lsock.settimeout(10)

        def serve():
            try:
                conn, _ = lsock.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.sendall(b"!")
            except (OSError, ssl.SSLError):
                pass  # the client refused the certificate
        t = threading.Thread(target=serve)
        t.start()
        client_ctx = ssl.create_default_context(cafile=cafile)
        try:
            with socket.create_connection(lsock.getsockname()[:2], timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=server_hostname) as c:
                return c.recv(1)
        except (OSError, ssl.SSLError) as e:
            return e
        finally:
            t.join(10)


def test_a_client_trusting_only_the_ca_accepts_the_server_by_name_and_address(tls):
    assert _handshake(tls, f"{tls}/ca.crt", "localhost") == b"!"
    assert _handshake(tls, f"{tls}/ca.crt", "127.0.0.1") == b"!"
    assert _handshake(tls, f"{tls}/ca.crt", "gpu-box") == b"!"
    if _has_ipv6_loopback():
        assert _handshake(tls, f"{tls}/ca.crt", "::1", host="::1") == b"!"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_client_refuses_a_name_not_on_it_or_a_ca_it_does_not_trust(tls, tmp_path):
    wrong_name = _handshake(tls, f"{tls}/ca.crt", "other.example")
    assert isinstance(wrong_name, ssl.SSLCertVerificationError) and "mismatch" in wrong_name.verify_message.lower()
    other = str(tmp_path / "other")
    certs.ensure_ca(other, "localaid CA other")
    untrusted = _handshake(tls, f"{other}/ca.crt", "localhost")
    assert isinstance(untrusted, ssl.SSLCertVerificationError)
    # the server sends its CA along: a client that does not trust it sees a self-signed root
    assert untrusted.verify_message == "self-signed certificate in certificate chain"


def test_each_issue_has_a_new_key_and_serial(tls):
    with open(f"{tls}/server.key", "rb") as f:
        key1 = f.read()
    serial1 = load(f"{tls}/server.crt").serial_number
    info = certs.issue_server(tls, NAMES, time.time())
    with open(f"{tls}/server.key", "rb") as f:
        assert f.read() != key1
    assert load(f"{tls}/server.crt").serial_number != serial1
    assert certs.pair_matches(tls) and certs.ca_matches(tls, info)


def test_the_policy_renews_what_the_adapter_issued_at_the_window(tls):
    """A round trip through CertInfo as the wiring will do: kept, renewed 30 days before the end,
    then kept again with a new certificate; a name added is a reissue."""
    info = certs.read_cert(f"{tls}/server.crt")
    ok = certs.ca_matches(tls, info)
    assert policy_tls.server_cert_action(info, NAMES, ok, time.time()) == ("keep", "")
    later = info.not_after - policy_tls.RENEW_BEFORE + 1
    assert policy_tls.server_cert_action(info, NAMES, ok, later)[0] == "renew"
    renewed = certs.issue_server(tls, NAMES, later)
    assert renewed.fingerprint != info.fingerprint and renewed.not_after > info.not_after
    assert policy_tls.server_cert_action(renewed, NAMES, certs.ca_matches(tls, renewed), later) == ("keep", "")
    assert policy_tls.server_cert_action(renewed, NAMES + ("10.0.0.2",), True, later) == \
        ("reissue", "names changed: adds 10.0.0.2")


def test_a_link_planted_where_a_key_is_written_is_replaced_not_followed(tls, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.unlink(f"{tls}/server.key")
    os.symlink(victim, f"{tls}/server.key")
    certs.issue_server(tls, NAMES, time.time())
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(f"{tls}/server.key") and mode(f"{tls}/server.key") == ("0o600", 0)


# --- refusals ----------------------------------------------------------------------------------------

def test_a_symlinked_key_is_refused(tls, tmp_path):
    real = tmp_path / "ca.key"
    os.rename(f"{tls}/ca.key", real)
    os.symlink(real, f"{tls}/ca.key")
    with pytest.raises(CertError, match="ca.key: is a symbolic link"):
        certs.ensure_ca(tls, "localaid CA gpu-box")
    with pytest.raises(CertError, match="is a symbolic link"):
        certs.issue_server(tls, NAMES, time.time())
    os.rename(f"{tls}/server.key", tmp_path / "server.key")
    os.symlink(tmp_path / "server.key", f"{tls}/server.key")
    with pytest.raises(CertError, match="server.key: is a symbolic link"):
        certs.pair_matches(tls)


def test_a_symlinked_or_foreign_directory_is_refused(tls, tmp_path):
    link = str(tmp_path / "link")
    os.symlink(tls, link)
    with pytest.raises(CertError, match="link: is a symbolic link"):
        certs.ensure_ca(link, "localaid CA gpu-box")
    os.chown(tls, 65534, 65534)
    with pytest.raises(CertError, match="is owned by uid 65534, not root"):
        certs.issue_server(tls, NAMES, time.time())
    os.chown(tls, 0, 0)
    os.chmod(tls, 0o777)
    with pytest.raises(CertError, match="is writable by others"):
        certs.ensure_ca(tls, "localaid CA gpu-box")


def test_a_key_file_of_another_user_or_readable_by_others_is_refused(tls):
    os.chown(f"{tls}/ca.key", 65534, 0)
    with pytest.raises(CertError, match="ca.key: is owned by uid 65534"):
        certs.issue_server(tls, NAMES, time.time())
    os.chown(f"{tls}/ca.key", 0, 0)
    os.chmod(f"{tls}/ca.key", 0o644)
    with pytest.raises(CertError, match=r"ca.key: is readable by others \(mode 0644\)"):
        certs.ensure_ca(tls, "localaid CA gpu-box")


# --- an admin's own pair --------------------------------------------------------------------------

@pytest.fixture
def admin_pair(tmp_path):
    """A pair as an admin would bring it: made by another CA, the chain in the certificate file."""
    src = str(tmp_path / "elsewhere")
    certs.ensure_ca(src, "Example Corp CA")
    certs.issue_server(src, ("chat.example",), time.time())
    return f"{src}/server.crt", f"{src}/server.key"


def test_an_admins_pair_is_installed_root_only(tmp_path, admin_pair):
    d = str(tmp_path / "tls")
    info = certs.install_pair(d, *admin_pair)
    assert info.names == ("chat.example",) and info.issuer == "CN=Example Corp CA"
    assert mode(f"{d}/server.key") == ("0o600", 0) and mode(f"{d}/server.crt") == ("0o644", 0)
    assert certs.pair_matches(d)
    assert load(f"{d}/server.crt", 1) == load(admin_pair[0], 1)  # its chain kept
    assert not certs.ca_matches(d, info)  # no local CA: not ours


def test_a_mismatched_pair_is_refused_naming_the_key(tmp_path, admin_pair):
    cert_file, _key = admin_pair
    wrong = str(tmp_path / "wrong.key")
    write(wrong, other_key_pem())
    with pytest.raises(CertError) as e:
        certs.install_pair(str(tmp_path / "tls"), cert_file, wrong)
    assert e.value.path == wrong and e.value.reason == f"does not match the certificate in {cert_file}"
    assert not os.path.exists(tmp_path / "tls" / "server.key")


def test_an_admins_symlinked_key_is_refused(tmp_path, admin_pair):
    cert_file, key_file = admin_pair
    link = str(tmp_path / "key-link")
    os.symlink(key_file, link)
    with pytest.raises(CertError, match="key-link: is a symbolic link"):
        certs.install_pair(str(tmp_path / "tls"), cert_file, link)


def test_an_encrypted_key_or_a_garbage_certificate_is_refused(tmp_path, admin_pair):
    cert_file, key_file = admin_pair
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    locked = str(tmp_path / "locked.key")
    write(locked, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"secret-passphrase")))
    with pytest.raises(CertError, match="encrypted with a passphrase") as e:
        certs.install_pair(str(tmp_path / "tls"), cert_file, locked)
    assert "secret-passphrase" not in str(e.value)
    garbage = str(tmp_path / "garbage.crt")
    write(garbage, b"not a certificate\n", 0o644)
    with pytest.raises(CertError, match="garbage.crt: holds no PEM certificate"):
        certs.install_pair(str(tmp_path / "tls"), garbage, key_file)
    with pytest.raises(CertError, match="missing.crt: is missing"):
        certs.install_pair(str(tmp_path / "tls"), str(tmp_path / "missing.crt"), key_file)


def test_a_key_pasted_into_the_certificate_file_is_not_copied_into_the_public_file(tmp_path, admin_pair):
    cert_file, key_file = admin_pair
    both = str(tmp_path / "both.pem")
    with open(cert_file, "rb") as c, open(key_file, "rb") as k:
        write(both, k.read() + c.read(), 0o600)
    certs.install_pair(str(tmp_path / "tls"), both, key_file)
    with open(tmp_path / "tls" / "server.crt", "rb") as f:
        public = f.read()
    assert b"PRIVATE KEY" not in public and public.count(b"BEGIN CERTIFICATE") == 2


# --- reading and checks --------------------------------------------------------------------------------

def test_read_cert_missing_garbage_and_link(tmp_path, tls):
    assert certs.read_cert(str(tmp_path / "none.crt")) is None
    bad = tmp_path / "bad.crt"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertError, match="bad.crt: is not a valid certificate"):
        certs.read_cert(str(bad))
    os.symlink(f"{tls}/server.crt", tmp_path / "link.crt")
    with pytest.raises(CertError, match="link.crt: is a symbolic link"):
        certs.read_cert(str(tmp_path / "link.crt"))
    with open(f"{tls}/ca.crt", "rb") as f:
        assert certs.read_cert_pem(f.read()).is_ca


def test_a_certificate_of_another_ca_or_another_certificate_does_not_match(tls, tmp_path, admin_pair):
    info = certs.read_cert(f"{tls}/server.crt")
    stale = certs.issue_server(tls, NAMES, time.time())
    assert not certs.ca_matches(tls, info) and certs.ca_matches(tls, stale)  # found by fingerprint
    certs.install_pair(tls, *admin_pair)  # same names would not help: another CA signed it
    assert not certs.ca_matches(tls, certs.read_cert(f"{tls}/server.crt"))


def test_a_key_and_certificate_torn_apart_are_reported(tls):
    assert certs.pair_matches(tls)
    write(f"{tls}/server.key", other_key_pem())
    assert not certs.pair_matches(tls)
    os.unlink(f"{tls}/server.key")
    assert not certs.pair_matches(tls)


def test_no_subprocess_and_no_logging_in_the_adapter():
    """Nothing secret can reach an argv or the journal: the module runs no program and logs nothing."""
    with open(certs.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"subprocess", "logging", "localaid.log", "shlex"}, imported
    assert not any(isinstance(n, ast.Attribute) and n.attr in ("system", "popen", "spawnv", "execv")
                   for n in ast.walk(tree))
