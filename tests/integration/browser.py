"""Drive Debian's headless Chromium over the DevTools protocol (stdlib only).

The browser is started with ``--remote-debugging-pipe``: protocol messages are
JSON texts ended by a NUL byte, written to Chromium's fd 3 and read from its
fd 4. A CA certificate given as ``trust_ca`` is added to a throw-away NSS
database in a throw-away HOME, so Chromium trusts it through its real
certificate verifier (no ``--ignore-certificate-errors``).

    with Browser(trust_ca="/path/ca.pem", workdir=tmp_path) as browser:
        page = browser.open("https://192.0.2.2:8443/")
        assert page.eval("window.isSecureContext") is True
        page.wait_for("document.querySelector('#chat')", timeout=10)
        page.screenshot(tmp_path / "page.png")

A navigation that fails (certificate not trusted, connection refused...)
raises ``NavigationError`` whose ``error`` is Chromium's text, for example
``net::ERR_CERT_AUTHORITY_INVALID``. Every wait has a timeout; Chromium's
stderr is kept in ``<workdir>/chromium.log`` and its tail is quoted in errors.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

CHROMIUM = "chromium"
CERTUTIL = "certutil"
CA_NICKNAME = "localaid-test-ca"
WINDOW = (1280, 900)
# Chromium 132 and later: plain --headless is the new headless mode and the
# old one is gone; "=new" is still accepted and says what we mean.
HEADLESS = "--headless=new"
# Screenshots and other files a test keeps for people to look at after the run. Not under
# the containers' work directory: harness.reap_stale removes unknown entries there.
ARTEFACTS = Path(os.environ.get("LOCALAID_IT_ARTEFACTS", "/var/tmp/localaid-it-artefacts"))


class BrowserError(RuntimeError):
    """Chromium failed to start, died, or did not answer in time."""


class NavigationError(BrowserError):
    """A page did not load; ``error`` is Chromium's net error text."""

    def __init__(self, url: str, error: str):
        super().__init__(f"{url}: {error}")
        self.url = url
        self.error = error


class EvalError(BrowserError):
    """A JavaScript expression threw; the message is the exception text."""


def available() -> str | None:
    """None when Chromium and certutil are installed, else why not."""
    for tool, package in ((CHROMIUM, "chromium"), (CERTUTIL, "libnss3-tools")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt install {package}; tools/setup-host does)"
    return None


def make_home(home: Path, trust_ca: str | os.PathLike | None) -> None:
    """An empty HOME with an NSS database; ``trust_ca`` added as a trusted CA."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, mode=0o700)
    db = f"sql:{nssdb}"
    _run([CERTUTIL, "-N", "-d", db, "--empty-password"])
    if trust_ca is not None:
        _run([CERTUTIL, "-A", "-d", db, "-t", "C,,", "-n", CA_NICKNAME, "-i", str(trust_ca)])


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise BrowserError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


class _Pipe:
    """The DevTools protocol over a pair of pipes: calls, replies and events."""

    def __init__(self, to_browser: int, from_browser: int, describe: Callable[[], str]):
        self._out, self._in = to_browser, from_browser
        self._describe = describe
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data):]
        return self._next_id

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        """Send one command and return its result; protocol errors raise."""
        msg_id = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline, f"no answer to {method}")
            if msg.get("id") != msg_id:
                if "method" in msg:
                    self.events.append(msg)
                continue
            if "error" in msg:
                raise BrowserError(f"{method}: {msg['error'].get('message')}")
            return msg.get("result", {})

    def wait_event(self, match: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """The first event (already received or coming) for which ``match`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if match(event):
                    return self.events.pop(i)
            msg = self._read(deadline, f"no {what}")
            if "method" in msg:
                self.events.append(msg)

    def _read(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise BrowserError(f"{what} within the timeout{self._describe()}")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium closed its pipe ({what}){self._describe()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, pipe: _Pipe, target_id: str, session: str):
        self._pipe, self.target_id, self.session = pipe, target_id, session

    def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        """Any DevTools command in this tab's session."""
        return self._pipe.call(method, params, self.session, timeout)

    def navigate(self, url: str, timeout: float = 30) -> None:
        """Load ``url`` and wait for its load event; failures raise NavigationError."""
        self._pipe.events = [e for e in self._pipe.events if e.get("sessionId") != self.session]
        result = self.call("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise NavigationError(url, result["errorText"])
        self._pipe.wait_event(self._is_load, timeout, f"load event for {url}")

    def _is_load(self, event: dict) -> bool:
        return event.get("sessionId") == self.session and event["method"] == "Page.loadEventFired"

    def eval(self, expr: str, timeout: float = 30) -> Any:
        """The value of a JavaScript expression (promises awaited); None for undefined."""
        result = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                                "awaitPromise": True}, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise EvalError(f"{expr}: {text}")
        return result["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 10, interval: float = 0.1) -> Any:
        """Poll ``expr`` until it is truthy and return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expr, timeout=max(1.0, deadline - time.monotonic()))
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(f"{expr!r} still {value!r} after {timeout} s")
            time.sleep(interval)

    def screenshot(self, path: str | os.PathLike) -> Path:
        """Write the visible page as a PNG file and return its path."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    @property
    def url(self) -> str:
        """The address the tab shows now (after redirects)."""
        return self.eval("location.href")


class Browser:
    """A headless Chromium with its own HOME, profile and (optionally) trusted CA.

    ``workdir`` holds the HOME, the profile and ``chromium.log``; when None a
    temporary directory is made and removed on close.
    """

    def __init__(self, trust_ca: str | os.PathLike | None = None,
                 workdir: str | os.PathLike | None = None, timeout: float = 30, netns_of: int | None = None):
        """netns_of: a PID whose network namespace Chromium runs in (a container's leader: the
        browser is then a client on the container's network, with this host's files)."""
        self.trust_ca, self.timeout, self.netns_of = trust_ca, timeout, netns_of
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="localaid-browser-"))
        self.log_path = self.workdir / "chromium.log"
        self._proc: subprocess.Popen | None = None
        self._fds: list[int] = []
        self.pipe: _Pipe | None = None

    def __enter__(self) -> "Browser":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def argv(self) -> list[str]:
        """Chromium's command line."""
        width, height = WINDOW
        return [CHROMIUM, HEADLESS, "--no-sandbox", "--remote-debugging-pipe",
                f"--user-data-dir={self.workdir / 'profile'}", "--no-first-run",
                "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--password-store=basic", "--mute-audio",
                f"--window-size={width},{height}", "about:blank"]

    def start(self) -> None:
        """Make the HOME and NSS db, start Chromium and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "home"
        shutil.rmtree(home, ignore_errors=True)  # a workdir used again starts clean
        make_home(home, self.trust_ca)
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        self._fds = [to_w, from_r]
        child_fds = [_high_fd(to_r), _high_fd(from_w)]
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_CACHE_HOME": str(home / ".cache")}
        argv = ["bash", "-c", _ON_FDS_3_4, "chromium-pipe", *map(str, child_fds), *self.argv()]
        if self.netns_of is not None:
            argv = ["nsenter", "-t", str(self.netns_of), "--net", *argv]
        try:
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=log, env=env, pass_fds=child_fds,
                                              start_new_session=True)
        finally:
            for fd in (to_r, from_w, *child_fds):
                os.close(fd)
        self.pipe = _Pipe(to_w, from_r, self._log_tail)
        self.version = self.pipe.call("Browser.getVersion", timeout=self.timeout)

    def open(self, url: str, timeout: float = 30) -> Page:
        """A new tab showing ``url``; a failed navigation raises NavigationError."""
        target = self.pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        target_id = target["targetId"]
        attached = self.pipe.call("Target.attachToTarget",
                                  {"targetId": target_id, "flatten": True}, timeout=timeout)
        page = Page(self.pipe, target_id, attached["sessionId"])
        page.call("Page.enable", timeout=timeout)
        page.navigate(url, timeout)
        return page

    def close(self) -> None:
        """Ask Chromium to quit, kill it after a few seconds, remove a temporary workdir."""
        if self._proc is not None and self._proc.poll() is None:
            self._quit()
        for fd in self._fds:
            os.close(fd)
        self._fds, self.pipe = [], None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _quit(self) -> None:
        try:
            self.pipe.send("Browser.close")
        except (OSError, AttributeError):
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, 9)
            self._proc.wait(timeout=10)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        if self._proc is not None and self._proc.poll() is not None:
            text.append(f"(chromium exited {self._proc.returncode})")
        return f"\n--- {self.log_path} (tail) ---\n" + "\n".join(text) if text else ""


# Moves the two pipe ends given as $1 and $2 to fds 3 and 4 (Chromium's
# --remote-debugging-pipe), closes the originals and runs the rest of argv.
_ON_FDS_3_4 = 'r=$1 w=$2; shift 2; exec 3<&"$r" 4>&"$w" {r}<&- {w}>&- && exec "$@"'


def _high_fd(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or more, so that moving it to 3 or 4 clobbers nothing."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
