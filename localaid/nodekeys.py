"""A UI host's keys to its GPU nodes, as `localaid node add` leaves them (root's):

    /etc/localaid/tls/ca.crt              the site CA, which signs every node's certificate
    /etc/localaid/tls/nodes/NAME.json     0600: {"name", "names", "token", "port", "not_after", "fingerprint"}

A webui.ollama_urls entry https://HOST:PORT belongs to the node whose `names` hold HOST (names
compared without case, addresses in their canonical form). Its token goes with every request
to it (`Authorization: Bearer`), from localaid's probes and from Open WebUI (the connection's
`key`); the site CA is trusted beside the system's CAs.

A token file is read without following a link, and only when it is root's and readable by no
one else: any other is skipped, with words that say why (load(...).errors). The daemon asks
every cycle: the answer is kept while the nodes directory and its files are unchanged (a
stat() each, no read), and a directory with a refused file is read again each time, so that a
fix is seen at once.
Nothing here ever writes a token to the journal: NodeKey's repr leaves it out.
"""

from __future__ import annotations

import errno
import json
import os
import re
import ssl
import stat
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from localaid import paths
from localaid.policy_tls import canonical_name  # the names node add writes, compared alike

SITE_CA = os.path.join(paths.TLS_DIR, "ca.crt")
CA_BUNDLE = "/etc/localaid/tls/ca-bundle.crt"  # the system's CAs and the site CA, for Open WebUI
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's ca-certificates
NODES = "nodes"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{16,512}")  # urlsafe: safe in a header, never a newline
_MAX = 64 * 1024


@dataclass(frozen=True)
class NodeKey:
    name: str
    token: str = field(repr=False)
    names: tuple[str, ...] = ()


class Keys(dict):
    """{node name: NodeKey}, with `errors`: the files skipped, and why (for STATUS and doctor)."""

    def __init__(self, items=(), errors=()):
        super().__init__(items)
        self.errors: tuple[str, ...] = tuple(errors)


def _stat_key(path: str):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid)


def _refusal(st: os.stat_result, what: str) -> str | None:
    if st.st_uid != 0:
        return f"{what} is not root's (owner uid {st.st_uid}): chown root:root it"
    if stat.S_IMODE(st.st_mode) & 0o077 and stat.S_ISREG(st.st_mode):
        return f"{what} is open to others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it"
    if stat.S_IMODE(st.st_mode) & 0o022:
        return f"{what} can be changed by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 700 it"
    return None


def _parse(text: bytes, path: str) -> NodeKey:
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError(f"{path}: not JSON") from None
    name, token, names = (doc.get(k) if isinstance(doc, dict) else None for k in ("name", "token", "names"))
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: no \"name\"")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError(f"{path}: \"token\" missing or not a URL-safe token")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: \"names\" is not a list of host names and addresses")
    return NodeKey(name, token, tuple(dict.fromkeys(canonical_name(n) for n in [name, *names])))


def _read_one(dfd: int, entry: str, path: str) -> NodeKey:
    """One NAME.json under the directory `dfd`: no link followed, root's and private, or ValueError."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: refused") from None
        raise ValueError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file: refused")
        why = _refusal(st, path)
        if why:
            raise ValueError(why + ": refused")
        data = os.read(fd, _MAX + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX:
        raise ValueError(f"{path}: larger than {_MAX} bytes")
    return _parse(data, path)


def _read_all(nodes_dir: str) -> Keys:
    try:
        dfd = os.open(nodes_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Keys()
    except OSError as e:
        why = "is a symbolic link" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
        return Keys(errors=[f"{nodes_dir} {why}: no node's token is used"])
    try:
        why = _refusal(os.fstat(dfd), nodes_dir)
        if why:
            return Keys(errors=[why + ": no node's token is used"])
        keys, errors = {}, []
        for entry in sorted(os.listdir(dfd)):
            if not entry.endswith(".json") or entry.startswith("."):
                continue
            try:
                k = _read_one(dfd, entry, os.path.join(nodes_dir, entry))
            except ValueError as e:
                errors.append(str(e))
                continue
            keys[k.name] = k
        return Keys(keys, errors)
    finally:
        os.close(dfd)


_cache: dict[str, tuple[object, Keys]] = {}
_lock = threading.Lock()


def _state(nodes_dir: str):
    """What says the files changed: the directory's stat and each NAME.json's (a few µs)."""
    key = _stat_key(nodes_dir)
    if key is None:
        return None
    try:
        entries = sorted(e for e in os.listdir(nodes_dir) if e.endswith(".json") and not e.startswith("."))
    except OSError:
        return key
    return key, tuple(_stat_key(os.path.join(nodes_dir, e)) for e in entries)


def load(tls_dir: str = paths.TLS_DIR) -> Keys:
    """{node name: NodeKey} from `tls_dir`/nodes (empty without it); .errors: files skipped.
    Read again only when the directory or one of its files changed (rewritten in place too),
    and every time while a file is refused."""
    nodes_dir = os.path.join(tls_dir, NODES)
    key = _state(nodes_dir)
    with _lock:
        hit = _cache.get(nodes_dir)
        if hit is not None and hit[0] == key and not hit[1].errors:
            return hit[1]
        keys = _read_all(nodes_dir)
        _cache[nodes_dir] = (key, keys)
        return keys


def node_for(url: str, keys) -> NodeKey | None:
    """The node an https:// URL belongs to (None for http:// or a host no node names)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    host = canonical_name(parts.hostname)
    return next((k for k in keys.values() if host in k.names), None)


def token_for(url: str, keys) -> str | None:
    """The bearer token for an https:// node URL, or None."""
    k = node_for(url, keys)
    return k.token if k else None


def tokens(urls, keys) -> dict[str, str]:
    """{URL without its trailing "/": token} for the https:// node URLs that have one."""
    out = {}
    for u in urls:
        token = token_for(u, keys)
        if token:
            out[u.rstrip("/")] = token
    return out


def auth_headers(url: str, keys) -> dict[str, str] | None:
    """{"Authorization": "Bearer …"} for a node URL with a token, else None."""
    token = token_for(url, keys)
    return {"Authorization": f"Bearer {token}"} if token else None


_contexts: dict[str, tuple[object, ssl.SSLContext]] = {}


def tls_context(site_ca: str = SITE_CA) -> ssl.SSLContext:
    """The system's CAs and the site CA (when there is one) trusted, the node's name checked.
    The same context is given back while the site CA is unchanged (one stat())."""
    key = _stat_key(site_ca)
    with _lock:
        hit = _contexts.get(site_ca)
        if hit is not None and hit[0] == key:
            return hit[1]
        ctx = ssl.create_default_context()
        if key is not None:
            try:
                ctx.load_verify_locations(site_ca)
            except (OSError, ssl.SSLError):
                pass  # an unreadable or broken CA: the node's certificate is then "not trusted"
        _contexts[site_ca] = (key, ctx)
        return ctx
