"""The machine as provisioning jobs see it: subprocesses, users, files, systemd, HTTP, clocks.

`Host` is the one seam tests replace (a subclass that records calls or fails on purpose); the
jobs never call subprocess, pwd or systemd directly. `run()` is the one subprocess runner: it
streams output line by line, keeps the tail, can drop privileges to a service user, and on a
timeout kills the whole process group (install scripts, uv and pip start helpers of their own).
"""

from __future__ import annotations

import collections
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from localaid.provision.job import TAIL_LINES, JobError

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]")


@dataclass(frozen=True)
class Result:
    rc: int
    tail: tuple[str, ...]  # the last lines of stdout and stderr together
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def last(self) -> str:
        return next((t for t in reversed(self.tail) if t.strip()), "")


def clean_lines(raw: str) -> list[str]:
    """Terminal output → plain lines: colour codes gone, carriage-return progress split."""
    return [t.strip() for t in _ANSI.sub("", raw).replace("\r", "\n").splitlines() if t.strip()]


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds if anything is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: str | None = "/",
        on_line: Callable[[str], None] | None = None, user: str | None = None,
        grace: float = 5.0) -> Result:
    """Run argv with stdout and stderr merged, read line by line.

    user: run as this user (its uid, primary gid and no supplementary groups), for code that
    needs no root: a venv build, `uv pip install`. A timeout stops the whole process group
    (SIGTERM, then SIGKILL after `grace`) and returns rc 124 with timed_out set."""
    kw: dict = {}
    if user is not None:
        pw = pwd.getpwnam(user)
        kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True, **kw)
    except OSError as e:
        return Result(127, (f"{argv[0]}: {e.strerror or e}",))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_group(proc, grace)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        for raw in proc.stdout:
            for text in clean_lines(raw.decode("utf-8", "replace")):
                tail.append(text)
                if on_line:
                    on_line(text)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill_group(proc, grace)
        proc.stdout.close()
    if expired.is_set():
        tail.append(f"(stopped after {timeout:g} s)")
        return Result(124, tuple(tail), True)
    return Result(rc, tuple(tail))


class Host:
    """The machine. Every method is small enough that a test double can replace it."""

    def __init__(self, systemd_timeout: float = 30):
        self._sd = None
        self._sd_timeout = systemd_timeout

    @property
    def sd(self):
        if self._sd is None:
            from localaid.adapters.systemd import Systemd
            self._sd = Systemd(timeout=self._sd_timeout)
        return self._sd

    # ---- processes
    def run(self, argv: list[str], **kw) -> Result:
        return run(argv, **kw)

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    # ---- users and files
    def ensure_user(self, name: str, home: str, comment: str) -> None:
        """A system user and group `name` with no login shell; retried while another job (Ollama's
        install script) holds /etc/passwd's lock."""
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            pass
        nologin = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        argv = ["useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
                "--shell", nologin, "--comment", comment, name]
        for _ in range(10):
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode == 0 or "lock" not in r.stderr.lower():
                break
            time.sleep(0.5)
        if r.returncode != 0:
            raise JobError(f"cannot create system user {name}: {r.stderr.strip()}")

    def ids(self, name: str) -> tuple[int, int]:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid

    def chown(self, path: str, user: str | None) -> None:
        uid, gid = self.ids(user) if user else (0, 0)
        os.chown(path, uid, gid, follow_symlinks=False)

    def free_bytes(self, path: str) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    # ---- systemd
    def daemon_reload(self) -> None:
        self.sd.daemon_reload()

    def enable(self, unit: str) -> None:
        self.sd.enable(unit)

    def disable(self, unit: str) -> None:
        subprocess.run(["systemctl", "disable", "--quiet", unit], capture_output=True, text=True)

    def unit_state(self, unit: str):
        return self.sd.state(unit)

    def start(self, unit: str) -> None:
        self._fresh(unit)
        self.sd.start(unit)

    def restart(self, unit: str) -> None:
        self._fresh(unit)
        self.sd.restart(unit)

    def _fresh(self, unit: str) -> None:
        """A planned start (a set-up or upgrade step) is not a crash loop: clear a failed state and
        systemd's start rate limit, which counts every start (5 in 10 s by default, a quick
        upgrade and its rollback included), and would refuse this one with start-limit-hit."""
        from localaid.adapters.systemd import SystemdError
        try:
            self.sd.reset_failed(unit)
        except SystemdError:
            pass  # not loaded yet: nothing to clear

    def stop(self, unit: str, timeout: float = 90) -> None:
        """Stop `unit` and wait until systemd has it inactive with no job left."""
        self.sd.stop(unit)
        self.wait_state(unit, ("inactive", "failed"), timeout)

    def wait_state(self, unit: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = self.monotonic() + timeout
        while True:
            st = self.unit_state(unit)
            if st.active_state in states and not st.job:
                return st.active_state
            if self.monotonic() >= deadline:
                raise JobError(f"{unit} is still {st.active_state} after {timeout:g} s "
                               f"(waited for {' or '.join(states)})")
            self.sleep(0.2)

    def cgroup_cpu(self, control_group: str) -> float | None:
        """CPU seconds a unit's cgroup has used (None: unknown): tells a start at work from a hung one."""
        from localaid.procfs import cgroup_cpu_seconds
        return cgroup_cpu_seconds(control_group) if control_group else None

    # ---- network, time
    def get(self, url: str, timeout: float = 2.0) -> tuple[int | None, object | None]:
        """(HTTP status or None, parsed JSON body or None). An https:// URL is asked without
        checking the certificate: the set-up jobs ask their own proxy whether it answers."""
        from localaid.adapters import http
        tls = http.tls_context(verify=False) if url.startswith("https:") else None
        probe, body = http.request(url, timeout, tls=tls)
        return probe.status, body

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()
