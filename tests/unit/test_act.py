"""Actor: what it asks systemd, in which order, and how failures are reported.

The systemd double records calls and raises like the D-Bus adapter does; the real adapter is
exercised against real systemd in tests/integration.
"""

import io

from localaid import log
from localaid.act import Actor
from localaid.adapters.systemd import SystemdError
from localaid.records import Action


class RecordingSystemd:
    def __init__(self, fail=(), sub_states=()):
        self.calls = []
        self.fail = dict(fail)
        self.sub_states = list(sub_states)  # what successive summaries() report, then "dead"

    def summaries(self, names):
        self.calls.append(("summaries", *names))
        sub = self.sub_states.pop(0) if self.sub_states else "dead"
        return {n: ("loaded", "active" if sub == "running" else "inactive", sub, False) for n in names}

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            if name in self.fail:
                raise SystemdError(self.fail[name])
        return call


def test_start_job_on_a_never_loaded_unit_still_starts(monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    sd = RecordingSystemd({"reset_failed": "ResetFailedUnit: Unit localaid-ollama-setup.service not loaded."})
    a = Actor(sd)
    a.run([Action("start-job", "ollama-setup", "provision")], None)
    assert sd.calls == [("reset_failed", "localaid-ollama-setup.service"), ("start", "localaid-ollama-setup.service")]
    assert a.recent[-1]["outcome"] == "ok"


def test_kill_restart_falls_back_to_main_then_restarts(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    sd = RecordingSystemd({"kill": "KillUnit: Failed to send signal SIGKILL to auxiliary processes: EIO"})
    a = Actor(sd)
    a.run([Action("kill-restart", "ollama.service", "hung", "3 probes failed", service="ollama")], None)
    assert sd.calls == [("kill", "ollama.service", "all", 9), ("kill", "ollama.service", "main", 9),
                        ("summaries", "ollama.service"), ("restart", "ollama.service")]
    assert a.counts == {("ollama", "kill-restart", "hung"): 1}
    assert out.getvalue().splitlines()[-1] == \
        '<5>kill-restart ollama.service: ok cause=hung evidence="3 probes failed"'


def test_failed_restart_is_an_error_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    a = Actor(RecordingSystemd({"restart": "RestartUnit: Access denied"}))
    a.run([Action("restart", "ollama.service", "boot-race")], None)
    assert out.getvalue().startswith("<3>restart ollama.service: failed: RestartUnit: Access denied")


def test_restart_waits_until_systemd_has_seen_the_killed_process_go(monkeypatch):
    """A RestartUnit racing systemd's own handling of the SIGKILL waited RestartSec= more (measured
    one run in five); asked once the unit left "running", it restarts at once (12 runs in 12)."""
    monkeypatch.setattr(log, "stream", io.StringIO())
    sd = RecordingSystemd(sub_states=["running", "running", "stop-sigterm", "auto-restart"])
    Actor(sd).run([Action("kill-restart", "ollama.service", "hung", service="ollama")], None)
    assert [c[0] for c in sd.calls] == ["kill", "summaries", "summaries", "summaries", "summaries", "restart"]


def test_restart_waits_for_the_exit_a_bounded_time(monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    now = [0.0]

    class Stuck(RecordingSystemd):
        def summaries(self, names):
            now[0] += 0.3
            return super().summaries(names)

    sd = Stuck(sub_states=["running"] * 100)
    Actor(sd, clock=lambda: now[0]).run([Action("kill-restart", "ollama.service", "hung", service="ollama")], None)
    assert sd.calls[-1] == ("restart", "ollama.service")
    assert sum(c[0] == "summaries" for c in sd.calls) == 4  # 1 s at 0.3 s a look
