"""GPU nodes that only the UI host can use: `localaid node add` (on the UI host) and
`localaid node join` (on the node).

One CA per site, the UI host's local CA (/etc/localaid/tls, the one webui.tls uses). For each
node, `node add NAME ADDRESS...` issues a certificate for the node's names and addresses (and
loopback, for the node's own probe), valid NODE_LIFETIME, and a fresh token; it keeps
nodes/NAME.json (0600: the names, the token, the certificate's end) for the UI host's side, and
writes NAME.localaid-node (0600, O_EXCL), the bundle the admin copies to the node.
`node join BUNDLE` on the node checks it (the key is the certificate's, the CA signed it) and
installs it in /etc/localaid/tls: server.key (0600) and server.crt, ca.crt (the site CA: the
node has no CA key), node.json, and node-token.map (0600: the token as nginx's map reads it).
Then it writes conf.d/50-node.yaml (ollama.expose, webui.enabled: false) unless that file
exists, and reloads localaid, whose set-up job starts the proxy.

The token never reaches an argv, a log line or a file others can read; the bundle holds a
private key and the token, and is refused when others may read it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric import ec

from localaid import paths
from localaid.policy_tls import LOOPBACK_NAMES, canonical_name
from localaid.provision import safefs
from localaid.provision.https import certs

NODE_FILE = "node.json"               # on a node: what it joined as
TOKEN_MAP = "node-token.map"          # on a node: nginx's map entry for the token (a credential)
NODES_DIR = "nodes"                   # on the UI host: NAME.json per node
NODE_LIFETIME = 730 * 86400.0         # two years: renewing means `node add` and `node join` again
DEFAULT_PORT = 11443
CONF_D_FILE = "50-node.yaml"
NOT_JOINED = ("ollama.expose needs this node's certificate and token from the UI host: there "
              "`sudo localaid node add NAME ADDRESS`, then copy NAME.localaid-node here and run "
              "`sudo localaid node join NAME.localaid-node`")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class NodeError(Exception):
    """Bad input or a refused bundle: one line for the admin."""


# ------------------------------------------------------------------------------ the UI host
def node_names(name: str, addresses: list[str]) -> tuple[str, ...]:
    if not _NAME.fullmatch(name.lower()):
        raise NodeError(f"{name!r}: a node's name is a host name such as gpu-a (letters, digits, '-')")
    names = [name.lower()] + [canonical_name(a) for a in addresses]
    return tuple(dict.fromkeys(names + list(LOOPBACK_NAMES)))


def issue(tls_dir: str, names: tuple[str, ...], now: float) -> tuple[bytes, bytes, bytes, certs.CertInfo]:
    """(certificate chain, key, CA certificate, info) of a new node certificate, written nowhere."""
    ca, _ = certs.ensure_ca(tls_dir, f"localaid CA {socket.gethostname()}")
    with certs._tls_dir(tls_dir) as dfd:  # noqa: SLF001 (this package's own helpers)
        ca_cert, ca_key = certs._load_ca(dfd, tls_dir)  # noqa: SLF001
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs._server_cert(key, ca_cert, ca_key, names, now, NODE_LIFETIME)  # noqa: SLF001
    ca_pem = certs._cert_pem(ca_cert)  # noqa: SLF001
    return certs._cert_pem(cert) + ca_pem, certs._key_pem(key), ca_pem, certs.cert_info(cert)  # noqa: SLF001


def _write_secret(path: str, data: bytes) -> None:
    """A new file only (O_EXCL, O_NOFOLLOW), 0600 before any byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _record(tls_dir: str, name: str, doc: dict) -> None:
    """nodes/NAME.json in the TLS directory (nodes/ root's 0700; the file 0600)."""
    with certs._tls_dir(tls_dir) as dfd:  # noqa: SLF001
        try:
            os.mkdir(NODES_DIR, 0o700, dir_fd=dfd)
        except FileExistsError:
            pass
        nfd = os.open(NODES_DIR, safefs.DIR_FLAGS, dir_fd=dfd)
        try:
            st = os.fstat(nfd)
            if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
                raise NodeError(f"{tls_dir}/{NODES_DIR} must be root's, mode 0700")
            safefs.write(nfd, f"{name}.json", json.dumps(doc, indent=1).encode(), 0o600, 0, 0)
        finally:
            os.close(nfd)


def add_main(args, config, tls_dir: str = paths.TLS_DIR, out=sys.stdout) -> int:
    """`localaid node add NAME ADDRESS... [--port P] [--output FILE]`."""
    try:
        names = node_names(args.name, args.addresses)
        chain, key, ca, info = issue(tls_dir, names, time.time())
        token = secrets.token_urlsafe(32)
        bundle = args.output or f"{args.name.lower()}.localaid-node"
        doc = {"name": args.name.lower(), "names": list(names), "port": args.port}
        _write_secret(bundle, json.dumps({**doc, "token": token, "certificate": chain.decode(),
                                          "key": key.decode(), "ca": ca.decode()}, indent=1).encode())
        _record(tls_dir, doc["name"], {**doc, "token": token, "not_after": info.not_after,
                                       "fingerprint": info.fingerprint})
    except (NodeError, certs.CertError) as e:
        print(f"localaid node add: {e}", file=sys.stderr)
        return 1
    except FileExistsError:
        print(f"localaid node add: {bundle} exists: remove it or name another with --output", file=sys.stderr)
        return 1
    host = names[1] if len(names) > len(LOOPBACK_NAMES) + 1 else names[0]
    print(f"wrote {bundle} (0600: the node's key and token; delete it once joined)\n"
          f"on the node:   scp {bundle} NODE: && ssh NODE sudo localaid node join {bundle}\n"
          f"on this host:  webui.ollama_urls: [..., https://{host}:{args.port}] then systemctl reload localaid\n"
          f"certificate valid until {time.strftime('%Y-%m-%d', time.gmtime(info.not_after))}", file=out)
    return 0


# ----------------------------------------------------------------------------------- the node
def read_bundle(path: str) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise NodeError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
            raise NodeError(f"{path} may be read by others (it holds a key and a token): chmod 600 {path}")
        try:
            doc = json.loads(f.read(1 << 20))
        except ValueError:
            raise NodeError(f"{path} is not a bundle of localaid node add") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in
                                             ("name", "token", "certificate", "key", "ca")):
        raise NodeError(f"{path} is not a bundle of localaid node add")
    return doc


def _checked(doc: dict, path: str):
    chain = certs._certs(doc["certificate"].encode(), path)  # noqa: SLF001
    ca = certs._certs(doc["ca"].encode(), path)[0]  # noqa: SLF001
    key = certs._load_key(doc["key"].encode(), path)  # noqa: SLF001
    certs._check_pair(chain[0], key, path, path)  # noqa: SLF001
    if not certs._signed_by(chain[0], ca):  # noqa: SLF001
        raise NodeError(f"{path}: its certificate is not signed by its CA")
    if not re.fullmatch(r"[A-Za-z0-9_-]{20,200}", doc["token"]):
        raise NodeError(f"{path}: its token is not one localaid node add makes")
    return chain, ca, key


def install(tls_dir: str, doc: dict, path: str) -> certs.CertInfo:
    chain, ca, key = _checked(doc, path)
    info = certs.cert_info(chain[0])
    node = {"name": doc["name"], "names": list(info.names), "not_after": info.not_after,
            "fingerprint": info.fingerprint}
    with certs._tls_dir(tls_dir) as dfd:  # noqa: SLF001
        certs._write(dfd, [  # noqa: SLF001
            (certs.SERVER_KEY, certs._key_pem(key), 0o600),  # noqa: SLF001
            (certs.SERVER_CRT, b"".join(certs._cert_pem(c) for c in chain), 0o644),  # noqa: SLF001
            (certs.CA_CRT, certs._cert_pem(ca), 0o644),  # noqa: SLF001
            (TOKEN_MAP, f'"Bearer {doc["token"]}" 1;\n'.encode(), 0o600),
            (NODE_FILE, json.dumps(node, indent=1).encode(), 0o600)])
    return info


def _configure(port: int, conf_d: str) -> str:
    path = os.path.join(conf_d, CONF_D_FILE)
    if os.path.lexists(path):
        return f"{path} exists: set ollama.expose there (e.g. \"0.0.0.0:{port}\")"
    text = (f"# Written by `localaid node join`: this host is a GPU node of a UI host.\n"
            f"ollama:\n  expose: \"0.0.0.0:{port}\"\nwebui:\n  enabled: false\n")
    _write_secret(path, text.encode())
    os.chmod(path, 0o644)
    return f"wrote {path}"


def join_main(args, config, tls_dir: str = paths.TLS_DIR, out=sys.stdout) -> int:
    """`localaid node join BUNDLE`."""
    if os.path.exists(os.path.join(tls_dir, certs.CA_KEY)):
        print(f"localaid node join: this host has a CA of its own ({tls_dir}/{certs.CA_KEY}): it is a UI host, "
              f"not a node", file=sys.stderr)
        return 1
    try:
        doc = read_bundle(args.bundle)
        info = install(tls_dir, doc, args.bundle)
        said = _configure(int(doc.get("port") or DEFAULT_PORT), args.conf_d)
    except (NodeError, certs.CertError) as e:
        print(f"localaid node join: {e}", file=sys.stderr)
        return 1
    reload = subprocess.run(["systemctl", "reload-or-restart", "localaid.service"], capture_output=True, text=True)
    print(f"joined as {doc['name']} ({', '.join(info.names)}), certificate valid until "
          f"{time.strftime('%Y-%m-%d', time.gmtime(info.not_after))}; {said}; localaid "
          f"{'reloaded' if reload.returncode == 0 else 'not reloaded: ' + reload.stderr.strip()}", file=out)
    return 0
