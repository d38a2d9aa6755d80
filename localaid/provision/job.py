"""The skeleton every privileged set-up job stands on.

A job (install Ollama, build Open WebUI's venv, fix the device nodes, run the GPU ladder) is a
list of steps. This module gives each job the same parts, so the three of them differ only in
their steps:

    Reporter    what a job says: a journal line (in its unit) or a terminal line (CLI), and
                /run/localaid/progress/<job>.json, which the daemon shows in STATUS
    JobError    a step failed: one line for users plus the tail of the output behind it
    Lock        one job of a kind at a time; says whether it waits or fails at once
    Maintenance /run/localaid/maintenance/<service>: the supervisor keeps its hands off
    Journal     the step a job is about to take, written before it is taken
    drive()     runs steps from the journal's step to the end; a failure (or a kill, found
                by the next run's resume()) is either completed or rolled back

Subprocesses, users, systemd and the clock are in host.py (the seam tests fake).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from localaid import fsutil, log, paths, progress

TAIL_LINES = 40


class JobError(Exception):
    """A step failed. `str(e)` is the one line users see; `tail` the output that explains it.
    `blocked`: a few words for STATUS when only the administrator can fix it (a retry would fail
    the same way): the job is then not retried until the configuration changes."""

    def __init__(self, message: str, tail: Iterable[str] = (), blocked: str | None = None):
        super().__init__(message)
        self.tail = tuple(tail)
        self.blocked = blocked


# ----------------------------------------------------------------------------------- reporter
class Reporter:
    """One API for everything a job says.

    job: the progress file's name (None: no progress file, e.g. `localaid upgrade` by hand).
    terminal: plain lines on stdout instead of journal lines (a person is watching).
    Every text passes log.printable() first: installer output or a model registry's words
    cannot forge journal fields or STATUS= lines.
    """

    def __init__(self, job: str | None, terminal: bool | None = None, out=None):
        self.job = job
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.out = out
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._last_write = 0.0

    def _say(self, priority: int, text: str, fields: dict) -> None:
        text = log.printable(text)
        if self.terminal:
            prefix = {log.ERR: "error: ", log.WARNING: "warning: "}.get(priority, "")
            extra = "".join(f" {k}={log.printable(str(v))}" for k, v in fields.items() if v is not None)
            print(prefix + text + extra, file=self.out or sys.stdout, flush=True)
        else:
            log.emit(priority, text, **fields)

    def say(self, text: str, **fields: object) -> None:
        """A line for the record that does not change the progress file."""
        self._say(log.INFO, text, fields)

    def step(self, text: str, fraction: float | None = None, **fields: object) -> None:
        self._say(log.INFO, text, fields)
        self.progress("running", text, fraction, force=True)

    def warn(self, text: str, **fields: object) -> None:
        self._say(log.WARNING, text, fields)
        self.progress("running", text, force=True)

    def line(self, text: str, what: str = "output") -> None:
        """One line of a child's output (the install script, uv): kept in the tail, logged, and
        shown as progress at most twice a second."""
        text = log.printable(text)
        self.tail.append(text)
        if self.terminal:
            print("  | " + text, file=self.out or sys.stdout, flush=True)
        else:
            log.info(f"{what}: {text}")
        self.progress("running", text[:160])

    def progress(self, state: str, text: str, fraction: float | None = None, force: bool = False) -> None:
        if self.job is None:
            return
        now = time.monotonic()
        if not force and state == "running" and now - self._last_write < 0.5:
            return
        self._last_write = now
        try:
            progress.report(self.job, state, log.printable(text), fraction, tuple(self.tail))
        except OSError as e:  # progress is a courtesy: never fail the work over it
            log.warning("cannot write progress file", error=e)

    def done(self, text: str, **fields: object) -> None:
        self._say(log.INFO, text, fields)
        self.progress("done", text, 1.0)

    def failed(self, text: str, tail: Iterable[str] = (), blocked: str | None = None) -> None:
        """The job failed: `text` to the journal; `blocked` (a few words) makes the progress
        state "blocked" (needs the administrator, not retried) with those words instead."""
        for t in tail:
            t = log.printable(t)
            if t not in self.tail:
                self.tail.append(t)
        self._say(log.ERR, text, {})
        if self.terminal:
            for t in list(self.tail)[-8:]:
                print("  | " + t, file=self.out or sys.stdout, flush=True)
        if blocked:
            self.progress("blocked", blocked, force=True)
        else:
            self.progress("failed", text)


# --------------------------------------------------------------------------- lock, maintenance
class Lock:
    """An exclusive flock on `path`. wait=False fails at once with a JobError naming `what`;
    wait=True says that it waits, then waits."""

    def __init__(self, path: str, what: str, wait: bool, rep: Reporter | None = None):
        self.path, self.what, self.wait, self.rep = path, what, wait, rep
        self.fd: int | None = None

    def __enter__(self) -> "Lock":
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                os.close(fd)
                raise JobError(f"another {self.what} is running") from None
            if self.rep:
                self.rep.say(f"another {self.what} is running: waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Maintenance:
    """/run/localaid/maintenance/<service> naming this process (PID and start time): while that
    process lives the supervisor does not repair the service. A job that is killed leaves it
    behind naming a dead process (or a PID since reused by another), which the supervisor
    ignores; the next run of the job takes it over."""

    def __init__(self, service: str, directory: str | None = None):
        self.path = os.path.join(directory or paths.MAINTENANCE_DIR, service)

    def on(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        progress.write_owner(self.path)

    def off(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @property
    def active(self) -> bool:
        return os.path.exists(self.path)

    def __enter__(self) -> "Maintenance":
        self.on()
        return self

    def __exit__(self, *exc) -> None:
        self.off()


# ------------------------------------------------------------------------------ step journal
ROLLBACK = "rollback"


@dataclass(frozen=True)
class Step:
    """One step of a job. `do(j)` returns data to record (or None) and raises JobError.

    undo: a failure in this step (or after it) needs the rollback; False for steps before
          anything the user relies on changed (a failed build just ends the job).
    resume: what the next run does when a kill interrupted this step: "redo" it (it is
          idempotent) or "rollback" (it cannot be completed safely, e.g. a half-run script).
    """
    name: str
    do: Callable[[dict], dict | None]
    undo: bool = True
    resume: str = "redo"


class Journal:
    """The step a job is about to take, in a JSON file (0600), written before the step runs."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> dict | None:
        j = fsutil.read_json(self.path)
        return j if isinstance(j, dict) and isinstance(j.get("step"), str) else None

    def write(self, j: dict) -> None:
        fsutil.write_json(self.path, j, mode=0o600)

    def advance(self, j: dict, step: str, **extra: object) -> dict:
        j = dict(j, step=step, **extra)
        j["log"] = list(j.get("log", [])) + [[step, round(time.time(), 3)]]
        self.write(j)
        return j

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


Hook = Callable[[str], None]


def drive(journal: Journal, j: dict, steps: list[Step], rollback: Callable[[dict], None],
          hook: Hook | None = None) -> dict:
    """Run `steps` from the one recorded in `j` to the end, recording each before it is taken.

    Success clears the journal and returns the last record. A JobError in an `undo` step records
    "rollback" with the reason, runs `rollback(j)`, clears the journal and raises a JobError
    saying both; in other steps it clears the journal and raises as is. `hook(step)` runs just
    before each step (tests kill the process there)."""
    names = [s.name for s in steps]
    start = j["step"]
    if start == ROLLBACK:
        return _roll_back(journal, j, rollback, hook)
    if start not in names:
        raise JobError(f"{journal.path}: unknown step {start!r}")
    for i in range(names.index(start), len(steps)):
        step = steps[i]
        if j["step"] != step.name:
            j = journal.advance(j, step.name)
        if hook:
            hook(step.name)
        try:
            extra = step.do(j) or {}
        except Exception as exc:  # noqa: BLE001  (anything a step raises ends it the same way)
            e = exc if isinstance(exc, JobError) else JobError(f"{step.name}: {exc}")
            if not step.undo:
                journal.clear()
                if e is exc:
                    raise
                raise e from exc
            j = journal.advance(j, ROLLBACK, reason=str(e), failed_step=step.name)
            try:
                _roll_back(journal, j, rollback, hook)
            except JobError as e2:
                raise JobError(f"{e}; rollback failed: {e2}", e.tail) from None
            raise JobError(f"{e}; rolled back", e.tail) from None
        if extra:
            j = dict(j, **extra)
    journal.clear()
    return j


def _roll_back(journal: Journal, j: dict, rollback: Callable[[dict], None], hook: Hook | None) -> dict:
    if hook:
        hook(ROLLBACK)
    try:
        rollback(j)
    except Exception:
        journal.clear()  # tried and failed: the error says so; retrying blindly could loop
        raise
    journal.clear()  # (a kill leaves the journal: the next run rolls back again)
    return j


def resume(journal: Journal, steps: list[Step], rollback: Callable[[dict], None],
           hook: Hook | None = None) -> tuple[str, dict] | None:
    """Finish what a killed run left: None when the journal is empty, else ("done" | "rolled
    back", record). A step marked resume="rollback" is rolled back, any other is redone and the
    job completed. Raises JobError when completing fails (after its own rollback)."""
    j = journal.read()
    if j is None:
        return None
    by_name = {s.name: s for s in steps}
    step = by_name.get(j["step"])
    if j["step"] == ROLLBACK or (step is not None and step.resume == ROLLBACK):
        if j["step"] != ROLLBACK:
            j = journal.advance(j, ROLLBACK, reason=f"interrupted during {j['step']}", failed_step=j["step"])
        _roll_back(journal, j, rollback, hook)
        return "rolled back", j
    return "done", drive(journal, j, steps, rollback, hook)
