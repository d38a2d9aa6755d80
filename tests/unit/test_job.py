"""The provisioning skeleton: journaled steps survive a real kill, the runner stops whole process
groups, the lock says whether it waits, reporters never pass control characters on."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from localaid import log, progress
from localaid.provision import host as host_mod
from localaid.provision.job import JobError, Journal, Lock, Maintenance, Reporter, Step, drive, resume

STEPS = ("prepare", "stop", "switch", "start")


class World:
    """A toy job: `state` is what the user would see; the rollback puts 'old' back serving."""

    def __init__(self, tmp_path, fail_at: str | None = None):
        self.journal = Journal(str(tmp_path / "job.json"))
        self.fail_at = fail_at
        self.state = {"serving": "old", "running": True, "built": None}

    def _do(self, name):
        def do(j):
            if name == self.fail_at:
                raise JobError(f"{name} failed", ["last line"])
            if name == "prepare":
                self.state["built"] = j["to"]
            elif name == "stop":
                self.state["running"] = False
            elif name == "switch":
                self.state["serving"] = j["to"]
            elif name == "start":
                self.state["running"] = True
            return {"did_" + name: True}
        return do

    def steps(self, resume_stop="redo"):
        return [Step("prepare", self._do("prepare"), undo=False),
                Step("stop", self._do("stop"), resume=resume_stop),
                Step("switch", self._do("switch")),
                Step("start", self._do("start"))]

    def rollback(self, j):
        self.state["serving"] = "old"
        self.state["running"] = True


def test_steps_run_in_order_and_the_journal_is_cleared(tmp_path):
    w = World(tmp_path)
    seen = []
    j = {"to": "new", "step": "prepare"}
    w.journal.write(j)
    out = drive(w.journal, j, w.steps(), w.rollback, hook=seen.append)
    assert seen == list(STEPS)
    assert w.state == {"serving": "new", "running": True, "built": "new"}
    assert out["did_start"] and [s for s, _ in out["log"]] == ["stop", "switch", "start"]
    assert w.journal.read() is None


def test_failure_before_the_point_of_no_return_just_ends(tmp_path):
    w = World(tmp_path, fail_at="prepare")
    with pytest.raises(JobError, match="prepare failed$") as e:
        drive(w.journal, {"to": "new", "step": "prepare"}, w.steps(), w.rollback)
    assert e.value.tail == ("last line",)
    assert w.state["serving"] == "old" and w.journal.read() is None


def test_failure_after_it_rolls_back_and_says_both(tmp_path):
    w = World(tmp_path, fail_at="start")
    with pytest.raises(JobError, match="start failed; rolled back"):
        drive(w.journal, {"to": "new", "step": "prepare"}, w.steps(), w.rollback)
    assert w.state == {"serving": "old", "running": True, "built": "new"}
    assert w.journal.read() is None


def test_an_unexpected_exception_is_a_failure_of_its_step(tmp_path):
    w = World(tmp_path)
    steps = w.steps()
    steps[2] = Step("switch", lambda j: {}["missing"])
    with pytest.raises(JobError, match="switch: 'missing'; rolled back"):
        drive(w.journal, {"to": "new", "step": "prepare"}, steps, w.rollback)
    assert w.state["running"] is True


def _killed_at(tmp_path, step: str, resume_stop="redo") -> dict:
    """Run the toy job in a child that dies with os._exit at `step` (no finally, no atexit: as
    SIGKILL); the child reports the state it reached through a file. Returns that state."""
    out = tmp_path / "state"
    pid = os.fork()
    if pid == 0:
        try:
            w = World(tmp_path)
            w.state = {"serving": "old", "running": True, "built": None}

            def hook(name):
                if name == step:
                    out.write_text(repr(w.state))
                    os._exit(137)
            j = {"to": "new", "step": "prepare"}
            w.journal.write(j)
            drive(w.journal, j, w.steps(resume_stop), w.rollback, hook)
            out.write_text(repr(w.state))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 137
    return eval(out.read_text())  # noqa: S307 (our own repr of a dict of str/bool/None)


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_any_step_is_completed_by_the_next_run(tmp_path, step):
    w = World(tmp_path)
    w.state = _killed_at(tmp_path, step)
    assert w.journal.read()["step"] == step
    outcome, j = resume(w.journal, w.steps(), w.rollback)
    assert outcome == "done"
    assert w.state == {"serving": "new", "running": True, "built": "new"}
    assert w.journal.read() is None
    assert resume(w.journal, w.steps(), w.rollback) is None


def test_a_step_that_cannot_be_redone_is_rolled_back(tmp_path):
    w = World(tmp_path)
    w.state = _killed_at(tmp_path, "switch", resume_stop="rollback")
    w2 = World(tmp_path)
    w2.state = dict(w.state)
    # killed during "switch": redo is allowed there, so it completes ...
    assert resume(w2.journal, w2.steps("rollback"), w2.rollback)[0] == "done"
    # ... but a kill during "stop" (marked resume="rollback") is rolled back
    w3 = World(tmp_path)
    w3.state = _killed_at(tmp_path, "stop", resume_stop="rollback")
    assert w3.state["running"] is True  # the kill came before the step ran
    w3.state["running"] = False  # as if it died half-way
    outcome, j = resume(w3.journal, w3.steps("rollback"), w3.rollback)
    assert outcome == "rolled back" and j["reason"] == "interrupted during stop"
    assert w3.state == {"serving": "old", "running": True, "built": "new"}
    assert w3.journal.read() is None


def test_a_kill_during_the_rollback_rolls_back_again(tmp_path):
    w = World(tmp_path, fail_at="start")
    calls = []

    def rollback(j):
        calls.append(j["reason"])
        if len(calls) == 1:
            raise KeyboardInterrupt  # a BaseException: the journal must survive it
        w.rollback(j)
    with pytest.raises(KeyboardInterrupt):
        drive(w.journal, {"to": "new", "step": "prepare"}, w.steps(), rollback)
    j = w.journal.read()  # what a kill during the rollback leaves
    assert j["step"] == "rollback" and j["reason"] == "start failed" and j["failed_step"] == "start"
    outcome, _ = resume(w.journal, w.steps(), rollback)
    assert outcome == "rolled back" and calls == ["start failed", "start failed"]
    assert w.state["serving"] == "old" and w.state["running"] and w.journal.read() is None


def test_the_runner_stops_the_whole_group_and_keeps_the_tail():
    t0 = time.monotonic()
    r = host_mod.run(["sh", "-c", "echo one; printf 'two\\r\\033[1mthree\\033[0m\\n'; sleep 60 & sleep 60"],
                     timeout=1.0, grace=0.5)
    assert r.timed_out and r.rc == 124 and time.monotonic() - t0 < 5
    assert r.tail[:3] == ("one", "two", "three") and "stopped after 1 s" in r.tail[-1]


def test_the_runner_reports_a_missing_program():
    r = host_mod.run(["/nonexistent/prog"], timeout=5)
    assert r.rc == 127 and "No such file" in r.last


def test_the_runner_can_drop_to_a_user():
    r = host_mod.run(["id", "-u"], timeout=5, user="nobody")
    if os.geteuid() == 0:
        assert r.ok and r.last == str(host_mod.pwd.getpwnam("nobody").pw_uid)
    else:
        assert r.rc == 127 or not r.ok  # only root may switch users


def test_lock_fails_fast_or_waits_and_says_so(tmp_path):
    path = str(tmp_path / "x.lock")
    out = io.StringIO()
    rep = Reporter(None, terminal=True, out=out)
    with Lock(path, "Ollama install", wait=False):
        with pytest.raises(JobError, match="another Ollama install is running"):
            with Lock(path, "Ollama install", wait=False):
                pass
        got = []
        t = threading.Thread(target=lambda: got.append(Lock(path, "Open WebUI job", True, rep).__enter__()))
        t.start()
        time.sleep(0.3)
        assert not got and "waiting for it" in out.getvalue()
    t.join(5)
    assert got
    got[0].__exit__()


def test_maintenance_marker_holds_our_pid(tmp_path):
    m = Maintenance("ollama", str(tmp_path))
    with m:
        pid, start = (tmp_path / "ollama").read_text().split()
        assert int(pid) == os.getpid() and int(start) == progress.process_start(os.getpid()) > 0
        assert m.active and progress.owner_alive(m.path)
    assert not m.active and not progress.owner_alive(m.path)


def test_a_marker_of_a_dead_process_or_a_reused_pid_is_not_alive(tmp_path):
    marker = tmp_path / "open-webui"
    child = os.fork()
    if child == 0:
        progress.write_owner(str(marker))
        os._exit(0)
    os.waitpid(child, 0)
    assert not progress.owner_alive(str(marker))  # the writer is gone
    marker.write_text(f"{os.getpid()} 12345\n")  # our PID, another start time: reused
    assert not progress.owner_alive(str(marker))
    marker.write_text(f"{os.getpid()}\n")  # the old format: only the PID
    assert progress.owner_alive(str(marker))
    marker.write_text("garbage\n")
    assert not progress.owner_alive(str(marker))


def test_reporter_strips_control_characters_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(progress.paths, "PROGRESS_DIR", str(tmp_path))
    monkeypatch.setattr(progress, "paths", progress.paths)
    buf = io.StringIO()
    monkeypatch.setattr(log, "stream", buf)
    rep = Reporter("t", terminal=False)
    rep.line("evil\nMAINPID=1\rREADY=1\x1b[2J")
    rep.failed("bad\nSTATUS=ok")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all("\r" not in x and "\x1b" not in x for x in lines)
    p = progress.read("t")
    assert p.state == "failed" and "\n" not in p.text and all("\n" not in d for d in p.detail)
