"""The install script's download against hostile and broken servers: the local fake site
(tests/fakes/ollama/server.py, HTTPS with a test CA and a plain-http twin) in each of its bad
modes. Each ends in one clear line, in bounded time and memory, and nothing is run.
"""

from __future__ import annotations

import io
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest

from localaid import log, paths, progress
from localaid.config import OllamaConfig
from localaid.provision.job import JobError, Reporter
from localaid.provision.ollama import JOB, UNIT, RefusedError, download, obtain_script, provision, script

FAKES = Path(__file__).resolve().parents[1] / "fakes" / "ollama"
sys.path.insert(0, str(FAKES))

import server as fake_site  # noqa: E402
from world import World  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = fake_site.FakeOllamaSite(tmp_path_factory.mktemp("site"), slow_seconds=5, plain_http=True).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def trust(site, monkeypatch):
    monkeypatch.setattr(script, "_ssl_context", lambda: ssl.create_default_context(cafile=str(site.certs["ca_crt"])))
    monkeypatch.setattr(log, "stream", io.StringIO())
    site.mode.update(script="ok", archive="ok")
    yield
    site.mode.update(script="ok", archive="ok")


URL = r"https://127\.0\.0\.1:\d+/install\.sh"
# site mode → what the one line says (after "install script download failed: " for failures of
# the download itself), and whether it may be retried
BAD = {
    "404": (rf"^install script download failed: HTTP 404 from {URL}; gave up after 1 attempt$", True),
    "html": (rf"^install script from {URL} is an HTML page, not a shell script .*; gave up after 1 attempt$", True),
    "truncated": (rf"^install script download failed: connection to {URL} closed early \(truncated download\): "
                  r"\d+ bytes of \d+; gave up", True),
    "huge": (rf"^install script from {URL} is 5242880 bytes: too big to be one; gave up", True),
    "drip": (rf"^install script download failed: download of {URL} did not finish within 2 s "
             r"\(\d+ bytes received\); gave up", True),
    "slow": (rf"^install script download failed: no answer from {URL} within 2 s; gave up", True),
    "chunked-huge": (rf"^install script from {URL} is more than 4 MiB: not an install script; gave up", True),
    "lying-chunked": (rf"^install script from {URL} is more than 4 MiB: not an install script; gave up", True),
    "lying-length": (rf"^install script from {URL} is not a complete shell script \(truncated download\?\): it does "
                     "not end with a line break; gave up", True),
    "redirect-http": (rf"^{URL} redirects to plain http:// \(http://127\.0\.0\.1:\d+/install\.sh\): refused; set "
                      r"ollama\.allow_http: true to accept it$", False),
    "redirect-HTTP": (rf"^{URL} redirects to plain http:// \((?i:http)://127\.0\.0\.1:\d+/install\.sh\): refused", False),
    "redirect-ftp": (rf"^{URL} redirects to ftp://127\.0\.0\.1/install\.sh: refused, only https:// is followed$",
                     False),
}


class Clock:
    """The retry budget's clock: it moves only when the job sleeps (downloads take real time)."""
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def obtain(url: str, budget: float = 2.0, allow_http: bool = False):
    clock = Clock()
    c = OllamaConfig(install_script=url, allow_http=allow_http)
    return obtain_script(c, Reporter(None, terminal=False), budget, sleep=clock.sleep, clock=lambda: clock.now)


@pytest.mark.parametrize("mode", list(BAD))
def test_each_bad_answer_is_one_clear_line(site, mode):
    site.mode["script"] = mode
    t0 = time.monotonic()
    with pytest.raises(JobError) as e:
        obtain(site.script_url)
    took = time.monotonic() - t0
    words, retried = BAD[mode]
    assert "\n" not in str(e.value)
    assert re.search(words, str(e.value)), str(e.value)
    assert isinstance(e.value, RefusedError) != retried
    assert took < 4.5  # the 2 s deadline holds against a drip and a silent server alike
    if mode in ("chunked-huge", "lying-chunked", "lying-length"):
        assert site.sent < 32 << 20  # the client hung up long before the 64/8 MiB were out


def test_scheme_checks_ignore_case_and_refuse_other_schemes(site):
    for url in (site.http_url, site.http_url.replace("http://", "HTTP://"), site.http_url.replace("http://", "HtTp://")):
        with pytest.raises(RefusedError, match="refusing plain http://"):
            obtain(url)
    for url in ("ftp://127.0.0.1/install.sh", "file:///etc/passwd", "install.sh", "data:,echo"):
        with pytest.raises(RefusedError, match="not an https:// URL or an absolute path"):
            obtain(url)
    site.requests.clear()
    assert site.requests == []
    # plain http where it is allowed, in any case; https with an upper-case scheme is https
    assert obtain(site.http_url, allow_http=True) == site.script()
    assert obtain(site.http_url.replace("http://", "HTTP://"), allow_http=True) == site.script()
    assert obtain(site.script_url.replace("https://", "HTTPS://")) == site.script()


def test_a_redirect_to_https_is_followed(site):
    site.mode["script"] = "redirect-https"
    assert obtain(site.script_url) == site.script()
    assert site.requests[-1][1] == "/install.sh?redirected=1"


def test_the_deadline_covers_the_whole_download():
    """A server that answers a byte at a time, each within any per-read timeout, is still cut off."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        conn.recv(4096)
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"#" * 40:  # ~8 s in all
            if stop.wait(0.1):
                break
            try:
                conn.send(bytes([b]))
            except OSError:
                break
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(JobError, match=r"(no answer|did not finish) .*within 1\.5 s"):
            download(f"http://127.0.0.1:{listener.getsockname()[1]}/install.sh", True, 1.5)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("mode", ["404", "truncated", "drip", "redirect-http", "lying-length", "chunked-huge"])
def test_nothing_is_run_after_a_bad_download(site, mode, tmp_path, monkeypatch):
    """The whole job: the old Ollama stays as it was, no script ran, the failure is one line."""
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "progress"))
    w = World(tmp_path)
    w.install("0.9.0")
    ran = []
    real_run = w.host.run
    monkeypatch.setattr(w.host, "run", lambda argv, **kw: ran.append(argv) or real_run(argv, **kw))
    site.mode["script"] = mode
    try:
        config = w.config(version="0.9.1", install_script=site.script_url, install_timeout=6.0)
        rep = Reporter(JOB, terminal=False)
        assert provision(config, rep, w.host, w.layout) == 1
    finally:
        w.close()
    assert not [a for a in ran if a[0] == "sh" and a[1:2] != ["-n"]]  # only `ollama --version` and checks
    assert w.binary_version() == "0.9.0" and w.lib_version() == "0.9.0" and w.served() == []
    assert not Path(w.layout.journal).exists() and not Path(w.layout.backup).exists()
    p = progress.read(JOB)
    assert p.state == "failed" and p.text.startswith("ollama setup failed: ") and "\n" not in p.text
    assert w.host.unit_state(UNIT).active_state == "inactive"
