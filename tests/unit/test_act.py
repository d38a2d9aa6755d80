"""Actor: what it asks systemd, in which order, and how failures are reported.

The systemd double records calls and raises like the D-Bus adapter does; the real adapter is
exercised against real systemd in tests/integration.
"""

import io

from localaid import log
from localaid.act import Actor
from localaid.adapters.systemd import SystemdError
from localaid.model import Action


class RecordingSystemd:
    def __init__(self, fail=()):
        self.calls = []
        self.fail = dict(fail)

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
                        ("restart", "ollama.service")]
    assert a.counts == {("ollama", "kill-restart", "hung"): 1}
    assert out.getvalue().splitlines()[-1] == \
        '<5>kill-restart ollama.service: ok cause=hung evidence="3 probes failed"'


def test_failed_restart_is_an_error_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    a = Actor(RecordingSystemd({"restart": "RestartUnit: Access denied"}))
    a.run([Action("restart", "ollama.service", "boot-race")], None)
    assert out.getvalue().startswith("<3>restart ollama.service: failed: RestartUnit: Access denied")
