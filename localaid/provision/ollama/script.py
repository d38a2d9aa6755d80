"""Ollama's install script: where it may come from, getting it in time, checking it whole.

ollama.install_script is an https:// URL, an http:// URL only with ollama.allow_http, or an
absolute path (air-gapped hosts). Schemes are compared without regard to case, so `HTTP://` is
plain http; anything else (ftp://, file://, a relative path) is refused before any connection.

One download attempt:
- has one deadline for all of it (connect, TLS, redirects, headers, body): its sockets are shut
  down when it passes, so a server that drips a byte a second is cut off as surely as a silent one;
- follows at most MAX_REDIRECTS redirects, each to https:// (http:// only with allow_http);
- reads at most SCRIPT_MAX + 1 bytes of body, whatever Content-Length or chunked encoding say; a
  body shorter than its Content-Length is a truncated download;
- goes through the proxies in the environment, as curl in the script does.

Then validate_script() checks the whole text (a shell script, not an HTML page, complete by
`sh -n`, of a sane size, the sha256 pin) before anything runs it: a download cut short is never
half-run. The standard library rather than httpx: the job starts ~0.3 s sooner.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from localaid.provision import host as hostmod
from localaid.provision.job import JobError, Reporter

SCRIPT_MIN, SCRIPT_MAX = 256, 4 << 20
MAX_REDIRECTS = 5
RETRY_DELAYS = (2, 5, 15, 30, 60, 120)
_CHUNK = 64 << 10


class ScriptError(JobError):
    """The script could not be obtained or is not fit to run."""


class RefusedError(ScriptError):
    """Refused by configuration (a scheme, a redirect): retrying cannot help."""


# ------------------------------------------------------------------------------------- sources
def check_url(url: str, allow_http: bool, redirected_from: str | None = None) -> None:
    """Raise RefusedError unless `url` is https:// (or http:// with allow_http)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme == "https" or (scheme == "http" and allow_http):
        return
    shown = url[:200]
    if redirected_from is not None:
        if scheme == "http":
            raise RefusedError(f"{redirected_from} redirects to plain http:// ({shown}): refused; "
                               "set ollama.allow_http: true to accept it")
        raise RefusedError(f"{redirected_from} redirects to {shown}: refused, only https:// is followed")
    if scheme == "http":
        raise RefusedError(f"refusing plain http:// for the install script ({shown}); "
                           "use https or set ollama.allow_http: true")
    raise RefusedError(f"install script {shown!r}: not an https:// URL or an absolute path")


def is_local(source: str, allow_http: bool) -> bool:
    """True for an absolute path; False for an acceptable URL; RefusedError for anything else."""
    if source.startswith("/"):
        return True
    check_url(source, allow_http)
    return False


# ----------------------------------------------------------------------------------- checking
def validate_script(data: bytes, sha256: str | None, source: str) -> None:
    """Refuse what is not a complete shell script; raise ScriptError saying why."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in head:
        raise ScriptError(f"install script from {source} is an HTML page, not a shell script "
                          "(a proxy, captive portal or error page answered)")
    if not data.startswith(b"#!"):
        raise ScriptError(f"install script from {source} does not start with #! "
                          f"(first bytes: {data[:40]!r})")
    if len(data) < SCRIPT_MIN:
        raise ScriptError(f"install script from {source} is only {len(data)} bytes: cut short?")
    if len(data) > SCRIPT_MAX:
        raise ScriptError(f"install script from {source} is {len(data)} bytes, more than the "
                          f"{SCRIPT_MAX >> 20} MiB an install script can reasonably be")
    if b"\0" in data:
        raise ScriptError(f"install script from {source} contains NUL bytes: not a shell script")
    if not data.endswith(b"\n"):  # cut in the middle of a line, where `sh -n` may see no fault
        raise ScriptError(f"install script from {source} is not a complete shell script "
                          "(truncated download?): it does not end with a line break")
    with tempfile.TemporaryDirectory(prefix="localaid-check-") as d:
        path = os.path.join(d, "install.sh")
        with open(path, "wb") as f:
            f.write(data)
        r = hostmod.run(["sh", "-n", path], timeout=30)
    if not r.ok:
        why = r.last.replace(path, "script") or "syntax error"
        raise ScriptError(f"install script from {source} is not a complete shell script "
                          f"(truncated download?): {why}")
    if sha256:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise ScriptError(f"install script from {source} has sha256 {got}, but "
                              f"ollama.install_script_sha256 is {sha256.lower()}: refusing to run it")


# ---------------------------------------------------------------------------------- download
def _ssl_context() -> ssl.SSLContext:
    """The system trust store (/etc/ssl/certs), as curl in the script uses it."""
    return ssl.create_default_context()


class _Deadline:
    """The sockets of one download attempt, shut down together when its time is up: a read
    that waits then returns at once, however the server paces its bytes."""

    def __init__(self, seconds: float):
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                self._shut(s)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed: its fd is gone, nothing to shut
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket, under TLS too

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


class _Conn(http.client.HTTPConnection):
    def __init__(self, *args, deadline: _Deadline, **kw):
        super().__init__(*args, **kw)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.track(self.sock)


class _TLSConn(http.client.HTTPSConnection):
    def __init__(self, *args, deadline: _Deadline, **kw):
        super().__init__(*args, **kw)
        self._deadline = deadline

    def connect(self) -> None:
        # HTTPSConnection.connect, with the TLS handshake after the socket is tracked.
        http.client.HTTPConnection.connect(self)  # TCP, and a proxy's CONNECT
        name = self._tunnel_host or self.host
        self.sock = self._context.wrap_socket(self.sock, server_hostname=name, do_handshake_on_connect=False)
        self._deadline.track(self.sock)
        self.sock.do_handshake()


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_Conn, deadline=self._deadline), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        self._tls = _ssl_context()
        super().__init__(context=self._tls)
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_TLSConn, deadline=self._deadline), req, context=self._tls)


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def __init__(self, allow_http: bool):
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, self.allow_http, redirected_from=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(deadline: _Deadline, allow_http: bool) -> urllib.request.OpenerDirector:
    """http(s) only: no ftp:, file: or data: handlers to be reached by any route."""
    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTP(deadline),
              _HTTPS(deadline), _Redirects(allow_http), urllib.request.HTTPDefaultErrorHandler(),
              urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    return opener


def _chunked(resp) -> bool:
    """(a cut chunked body raises IncompleteRead: one that ended normally is whole)"""
    return "chunked" in (resp.headers.get("Transfer-Encoding") or "").lower()


def _declared_length(resp) -> int | None:
    if _chunked(resp):
        return None  # http.client reads the chunks and ignores a Content-Length beside them
    length = (resp.headers.get("Content-Length") or "").strip()
    return int(length) if length.isdigit() else None


def download(url: str, allow_http: bool, timeout: float) -> bytes:
    """One attempt to GET `url` within `timeout` seconds in all. Raises JobError (RefusedError
    for a scheme or redirect that is not allowed, ScriptError for a body too big to be a script)."""
    check_url(url, allow_http)
    request = urllib.request.Request(url, headers={"User-Agent": "localaid", "Accept": "*/*"})
    data = bytearray()
    declared: int | None = None
    with _Deadline(timeout) as deadline:
        try:
            with _opener(deadline, allow_http).open(request, timeout=timeout) as resp:
                declared = _declared_length(resp)
                if declared is not None and declared > SCRIPT_MAX:
                    raise ScriptError(f"install script from {url} is {declared} bytes: too big to be one")
                while len(data) <= SCRIPT_MAX:
                    chunk = resp.read(min(_CHUNK, SCRIPT_MAX + 1 - len(data)))
                    if not chunk:
                        break
                    data += chunk
        except JobError:
            raise
        except Exception as e:  # noqa: BLE001  (every way a download fails ends in one line)
            raise _failure(e, url, timeout, deadline.expired, len(data), declared) from None
        whole = declared is not None and len(data) >= declared or _chunked(resp)
        if deadline.expired and not whole:  # the end of the body may have been the deadline's cut
            raise _failure(TimeoutError(), url, timeout, True, len(data), declared)
    if len(data) > SCRIPT_MAX:
        raise ScriptError(f"install script from {url} is more than {SCRIPT_MAX >> 20} MiB: not an install script")
    if declared is not None and len(data) < declared:
        raise JobError(f"connection to {url} closed early (truncated download): {len(data)} bytes of {declared}")
    return bytes(data)


def _failure(e: BaseException, url: str, timeout: float, expired: bool, got: int,
             declared: int | None) -> JobError:
    reason = getattr(e, "reason", None)
    if expired or isinstance(e, (socket.timeout, TimeoutError)) or isinstance(reason, (socket.timeout, TimeoutError)):
        if got:
            return JobError(f"download of {url} did not finish within {timeout:g} s ({got} bytes received)")
        return JobError(f"no answer from {url} within {timeout:g} s")
    if isinstance(e, urllib.error.HTTPError):
        if 300 <= e.code < 400:
            return RefusedError(f"{url}: redirect not followed ({e.code}: {e.reason})")
        return JobError(f"HTTP {e.code} from {url}")
    if isinstance(e, http.client.IncompleteRead):
        return JobError(f"connection to {url} closed early (truncated download): "
                        f"{got + len(e.partial)} bytes of {declared or 'unknown'}")
    if isinstance(e, urllib.error.URLError):
        why = getattr(reason, "strerror", None) or str(reason)
        return JobError(f"cannot connect to {urlsplit(url).netloc}: {why}")
    return JobError(f"download of {url} failed: {e or type(e).__name__}")


def obtain_script(cfg, rep: Reporter, budget: float, sleep=time.sleep, clock=time.monotonic) -> bytes:
    """The checked install script: the local file, or a download retried with backoff inside
    `budget` seconds (a refusal is never retried)."""
    source = cfg.install_script
    if is_local(source, cfg.allow_http):
        try:
            with open(source, "rb") as f:
                data = f.read(SCRIPT_MAX + 1)
        except OSError as e:
            raise ScriptError(f"install script {source}: {e.strerror}") from None
        validate_script(data, cfg.install_script_sha256, source)
        return data
    deadline = clock() + budget
    per_try = max(3.0, min(60.0, budget / 3))
    attempt = 0
    while True:
        attempt += 1
        rep.step(f"downloading install script from {source}" + (f" (attempt {attempt})" if attempt > 1 else ""))
        try:
            data = download(source, cfg.allow_http, min(per_try, max(1.0, deadline - clock())))
            validate_script(data, cfg.install_script_sha256, source)
            return data
        except RefusedError:
            raise
        except JobError as e:
            what = str(e) if isinstance(e, ScriptError) else f"install script download failed: {e}"
            delay = RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]
            if deadline - clock() < delay + 1:
                raise ScriptError(f"{what}; gave up after {attempt} attempt{'s' if attempt > 1 else ''}") from None
            rep.warn(f"{what}, retrying in {delay} s")
            sleep(delay)
