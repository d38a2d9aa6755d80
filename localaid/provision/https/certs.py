"""The certificates of `webui.tls` on disk: a local CA, the server certificates it signs, or an
admin's own pair, in TLS_DIR (python3-cryptography; Debian 12's 38.0.4 has every call used).

Layout, all root's:

    TLS_DIR/          0755   the CA certificate must be readable by an admin fetching it
      ca.key          0600   EC P-256, never leaves the directory
      ca.crt          0644   10 years, path length 0: what users trust
      server.key      0600   EC P-256, a new one at each issue; nginx gets it as a credential
      server.crt      0644   the server certificate followed by the CA's

Safety: the directory and every file are opened without following a link (a link, or a
directory or file root does not own, is refused with CertError, as is a directory others may
write); a file is written under a fresh temporary name (O_EXCL|O_NOFOLLOW, its mode set
before any byte), fsync'ed, then renamed over the old one, and the directory fsync'ed. No
subprocess runs: no key or passphrase can reach an argv or the journal, and no error message
quotes a file's contents.

A pair is two renames, key then certificate. The certificate is the commit point: what
localaid reads (policy_tls, STATUS, the fingerprint) follows server.crt. nginx reads both
files only when it starts (the key through LoadCredential=, copied at start), and the caller
restarts it after both renames; a start racing the two renames, or a crash between them,
leaves a key that does not match the certificate, which pair_matches() reports so that the
caller issues again.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import ipaddress
import os
import re
import stat
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localaid.policy_tls import LIFETIME, CertInfo, canonical_name
from localaid.provision import safefs

TLS_DIR = "/etc/localaid/tls"
CA_KEY, CA_CRT = "ca.key", "ca.crt"
SERVER_KEY, SERVER_CRT = "server.key", "server.crt"
OWNER = 0  # root owns the directory and every file in it
CA_LIFETIME = 3650 * 86400.0  # 10 years
SKEW = 60.0  # a certificate starts this long before its issue, for clocks a little behind
MAX_FILE = 1 << 20  # a PEM file is a few KB: anything over 1 MiB is not one
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


class CertError(Exception):
    """A certificate or key that localaid cannot use: `path` names the file, `reason` says why
    (never its contents)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# --- reading -------------------------------------------------------------------------------------

def _utc(cert: x509.Certificate, end: str) -> float:
    """A certificate's not_valid_before/after as a Unix time (cryptography ≥ 42 names the
    aware form *_utc and deprecates the naive one Debian 12's 38 has)."""
    dt = getattr(cert, f"{end}_utc", None) or getattr(cert, end)
    return float(calendar.timegm(dt.utctimetuple()))


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    kinds = (x509.DNSName, x509.IPAddress)  # other kinds (e-mail, URI) name no server
    return tuple(canonical_name(str(n.value)) for n in san if isinstance(n, kinds))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def cert_info(cert: x509.Certificate) -> CertInfo:
    """A parsed certificate → CertInfo."""
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return CertInfo(names=_names(cert), not_before=_utc(cert, "not_valid_before"),
                    not_after=_utc(cert, "not_valid_after"),
                    fingerprint=":".join(fp[i:i + 2] for i in range(0, len(fp), 2)),
                    issuer=cert.issuer.rfc4514_string(), subject=cert.subject.rfc4514_string(),
                    is_ca=_is_ca(cert))


def _certs(pem: bytes, path: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order (CertError when there is none or one is bad)."""
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise CertError(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError as e:
        raise CertError(path, f"is not a valid certificate ({e})") from None


def read_cert_pem(pem: bytes, path: str = "<PEM>") -> CertInfo:
    """The first certificate of a PEM text (a server certificate's chain follows it)."""
    return cert_info(_certs(pem, path)[0])


def _open_regular(dfd: int | None, path: str, name: str) -> int:
    """A read descriptor of the regular file `name` (in `dfd`, else the path itself), never
    through a link at its last component."""
    try:
        if dfd is not None:
            return safefs.open_file(dfd, name)
        fd = os.open(path, safefs.READ_FLAGS)
    except safefs.UnsafeFile as e:
        raise CertError(path, e.strerror) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CertError(path, "is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CertError(path, "is not a regular file")
    return fd


def _read(path: str, dfd: int | None = None, secret: bool = False) -> bytes | None:
    """A small file's bytes, None when it is missing. Inside TLS_DIR (`dfd`) the file must be
    root's, and a `secret` one readable by root only."""
    try:
        fd = _open_regular(dfd, path, os.path.basename(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CertError(path, f"cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if dfd is not None and st.st_uid != OWNER:
            raise CertError(path, f"is owned by uid {st.st_uid}, not root")
        if secret and dfd is not None and st.st_mode & 0o077:
            raise CertError(path, f"is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600")
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise CertError(path, "is over 1 MiB: not a PEM certificate or key")
    return data


def read_cert(path: str) -> CertInfo | None:
    """The first certificate of the PEM file `path`; None when it is missing (CertError when it
    is a link, unreadable or not a certificate)."""
    pem = _read(path)
    return None if pem is None else read_cert_pem(pem, path)


def _load_key(pem: bytes, path: str):
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CertError(path, "is encrypted with a passphrase: nginx cannot read it at start; "
                              "give the key without one") from None
    except ValueError:
        raise CertError(path, "is not a PEM private key") from None


def _public(obj) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_pair(cert: x509.Certificate, key, key_path: str, cert_path: str) -> None:
    if _public(cert) != _public(key):
        raise CertError(key_path, f"does not match the certificate in {cert_path}")


# --- the directory and writing ------------------------------------------------------------------------

def _open_dir(path: str) -> int:
    try:
        return os.open(path, safefs.DIR_FLAGS)
    except NotADirectoryError:
        raise CertError(path, "is a symbolic link" if os.path.islink(path) else "is not a directory") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CertError(path, "is a symbolic link") from None
        raise


@contextlib.contextmanager
def _tls_dir(path: str) -> Iterator[int]:
    """A descriptor of the TLS directory, made root's 0755 when missing; a link, a directory
    of another owner or one others may write is refused."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    made = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
        made = True
    fd = _open_dir(path)
    try:
        st = os.fstat(fd)
        if made:
            os.fchown(fd, OWNER, OWNER)
            os.fchmod(fd, 0o755)
        elif st.st_uid != OWNER:
            raise CertError(path, f"is owned by uid {st.st_uid}, not root")
        elif st.st_mode & 0o022:
            raise CertError(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
        yield fd
    finally:
        os.close(fd)


def _write(dfd: int, files: list[tuple[str, bytes, int]]) -> None:
    """Replace each (name, data, mode) in order: all staged first (safefs.stage: O_EXCL,
    O_NOFOLLOW, mode set before any byte, fsync), then renamed one by one."""
    staged: list[tuple[str, str]] = []
    try:
        for name, data, mode in files:
            staged.append((safefs.stage(dfd, name, data, mode, OWNER, OWNER), name))
        for tmp, name in staged:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        for tmp, _name in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
    os.fsync(dfd)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the local CA ------------------------------------------------------------------------------------

def _ca_cert(key, common_name: str, now: float) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.fromtimestamp(now - SKEW, timezone.utc)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(seconds=CA_LIFETIME))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def _load_ca(dfd: int, path: str):
    """(certificate, key) of the CA in the directory; CertError when either is missing or bad."""
    crt_path, key_path = os.path.join(path, CA_CRT), os.path.join(path, CA_KEY)
    cert_pem, key_pem = _read(crt_path, dfd), _read(key_path, dfd, secret=True)
    if cert_pem is None:
        raise CertError(crt_path, "is missing: no local CA yet")
    if key_pem is None:
        raise CertError(key_path, f"is missing while {CA_CRT} exists: the CA cannot sign; remove "
                                  f"{crt_path} to make a new CA (every client must then trust the new one)")
    cert, key = _certs(cert_pem, crt_path)[0], _load_key(key_pem, key_path)
    _check_pair(cert, key, key_path, crt_path)
    if not _is_ca(cert):
        raise CertError(crt_path, "is not a CA certificate (BasicConstraints ca=false)")
    return cert, key


def ensure_ca(path: str, common_name: str) -> tuple[CertInfo, bool]:
    """The local CA in `path` → (its CertInfo, whether it was made now). An existing CA is kept
    as it is (a key that does not match its certificate raises CertError, never a silent new
    CA); a key left without a certificate (a creation cut short) is used for the new one."""
    with _tls_dir(path) as dfd:
        if _read(os.path.join(path, CA_CRT), dfd) is not None:
            return cert_info(_load_ca(dfd, path)[0]), False
        key_path = os.path.join(path, CA_KEY)
        key_pem = _read(key_path, dfd, secret=True)
        key = _load_key(key_pem, key_path) if key_pem is not None else ec.generate_private_key(ec.SECP256R1())
        cert = _ca_cert(key, common_name, time.time())
        files = [] if key_pem is not None else [(CA_KEY, _key_pem(key), 0o600)]
        _write(dfd, files + [(CA_CRT, _cert_pem(cert), 0o644)])
        return cert_info(cert), True


# --- server certificates -------------------------------------------------------------------------

def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _server_cert(key, ca_cert: x509.Certificate, ca_key, names: tuple[str, ...], now: float,
                 lifetime: float = LIFETIME) -> x509.Certificate:
    start = datetime.fromtimestamp(now - SKEW, timezone.utc)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(seconds=lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_san(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(ca_key, hashes.SHA256()))


def issue_server(path: str, names: tuple[str, ...], now: float) -> CertInfo:
    """A new server key and certificate for `names` (policy_tls.wanted_names), signed by the CA
    in `path`, valid from a minute before `now` for LIFETIME; server.crt holds it and the CA's."""
    names = tuple(canonical_name(n) for n in names)
    if not names or not all(names):
        raise ValueError("a server certificate needs at least one name")
    with _tls_dir(path) as dfd:
        ca_cert, ca_key = _load_ca(dfd, path)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_cert(key, ca_cert, ca_key, names, now)
        _write(dfd, [(SERVER_KEY, _key_pem(key), 0o600),
                     (SERVER_CRT, _cert_pem(cert) + _cert_pem(ca_cert), 0o644)])
        return cert_info(cert)


def install_pair(path: str, cert_file: str, key_file: str) -> CertInfo:
    """An admin's certificate (with its chain) and key copied into `path` as server.crt and
    server.key, after checking that the key is the certificate's. Only the certificates of
    `cert_file` are copied (a key pasted into it would otherwise land in a 0644 file)."""
    cert_pem, key_pem = _read(cert_file), _read(key_file)
    if cert_pem is None:
        raise CertError(cert_file, "is missing")
    if key_pem is None:
        raise CertError(key_file, "is missing")
    chain, key = _certs(cert_pem, cert_file), _load_key(key_pem, key_file)
    _check_pair(chain[0], key, key_file, cert_file)
    with _tls_dir(path) as dfd:
        _write(dfd, [(SERVER_KEY, _key_pem(key), 0o600),
                     (SERVER_CRT, b"".join(_cert_pem(c) for c in chain), 0o644)])
    return cert_info(chain[0])


# --- checks --------------------------------------------------------------------------------------

def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether `ca_cert`'s key signed `cert` (ECDSA: the only kind of CA localaid makes)."""
    ca_pub = ca_cert.public_key()
    if cert.issuer != ca_cert.subject or not isinstance(ca_pub, ec.EllipticCurvePublicKey):
        return False
    try:
        ca_pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def ca_matches(path: str, info: CertInfo) -> bool:
    """Whether the server certificate `info` (server.crt in `path`, found by its fingerprint)
    was signed by the CA in `path`. False when either is missing or they differ."""
    with _tls_dir(path) as dfd:
        ca_pem = _read(os.path.join(path, CA_CRT), dfd)
        server_pem = _read(os.path.join(path, SERVER_CRT), dfd)
    if ca_pem is None or server_pem is None:
        return False
    leaf = _certs(server_pem, os.path.join(path, SERVER_CRT))[0]
    if cert_info(leaf).fingerprint != info.fingerprint:
        return False
    return _signed_by(leaf, _certs(ca_pem, os.path.join(path, CA_CRT))[0])


def pair_matches(path: str) -> bool:
    """Whether server.key in `path` is the key of server.crt's certificate (False after a crash
    between the two renames, or when either is missing)."""
    crt_path, key_path = os.path.join(path, SERVER_CRT), os.path.join(path, SERVER_KEY)
    with _tls_dir(path) as dfd:
        cert_pem, key_pem = _read(crt_path, dfd), _read(key_path, dfd, secret=True)
    if cert_pem is None or key_pem is None:
        return False
    return _public(_certs(cert_pem, crt_path)[0]) == _public(_load_key(key_pem, key_path))
