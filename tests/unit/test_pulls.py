"""Model pulls as the set-up job does them: how far, how fast, how long left (pullmeter.py), and
a model that would not fit on the disk stopped before its data comes (provision/ollama/models.py),
against the fake Ollama serving the pull at a fixed rate."""

from __future__ import annotations

import re

import pytest

from localaid.config import Config, ModelSpec
from localaid.provision.ollama import models
from localaid.pullmeter import PullMeter
from test_ollama_adapter import fake  # noqa: F401  (the fixture: the fake Ollama on a free port)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_words_say_how_far_of_how_much_and_how_long_at_the_speed_seen():
    clock = Clock()
    m = PullMeter("qwen3:8b", clock)
    assert m.words() == "pulling qwen3:8b" and m.left() is None
    assert not m.add(None, None, None)  # a status line
    assert m.add("sha256:a", 5_000_000_000, 0)
    assert m.words() == "pulling qwen3:8b 0 % of 5 GB"  # no speed yet: no time left said
    clock.t += 5
    m.add("sha256:a", 5_000_000_000, 500_000_000)
    m.add("sha256:b", 200_000_000, 0)  # a second layer: the size grows
    assert m.total == 5_200_000_000 and m.done == 500_000_000
    clock.t += 5
    m.add("sha256:a", 5_000_000_000, 1_000_000_000)
    # 1 GB in 10 s: 100 MB/s, 4.2 GB left: 42 s
    assert m.words() == "pulling qwen3:8b 19 % of 5.2 GB, ~42 s"
    clock.t += 60  # a stall: the window keeps only the last reading, no speed
    m.add("sha256:a", 5_000_000_000, 1_000_000_000)
    assert m.left() is None
    m.add("sha256:a", 5_000_000_000, 9_000_000_000)  # more than the total: capped
    assert m.done == 5_000_000_000


class Rep:
    """The Reporter's calls, kept."""

    def __init__(self):
        self.progress_texts: list[str] = []
        self.lines: list[str] = []

    def progress(self, state, text, fraction=None, force=False):
        self.progress_texts.append(text)

    def step(self, text, fraction=None, **fields):
        self.lines.append(text)

    warn = step


def config(url: str, *names: str):
    c = Config()
    port = int(url.rsplit(":", 1)[1])
    return c.ollama.__class__(port=port, models_auto=False, models=tuple(ModelSpec(n) for n in names))


def test_the_set_up_job_says_how_far_the_pull_is(fake):  # noqa: F811
    fake.faults(pull_rate=4_000_000_000)  # the fake's 1.7b (about 1 GB) in nine steps of ~30 ms
    rep = Rep()
    assert models.pull_models(config(fake.url, "qwen3:1.7b"), rep) == []
    texts = [t for t in rep.progress_texts if " % of " in t]
    assert re.fullmatch(r"pulling qwen3:1\.7b 0 % of \d+(\.\d)? [MG]B", texts[0]), texts[0]
    assert texts[-1].startswith("pulling qwen3:1.7b 100 % of")
    assert any(", ~" in t for t in texts[1:-1])  # the time left, once the speed is known
    assert rep.lines == ["pulling model qwen3:1.7b (1/1)", "pulled model qwen3:1.7b"]


def test_a_model_the_disk_cannot_hold_is_refused_before_its_data(fake, monkeypatch):  # noqa: F811
    monkeypatch.setattr(models, "free_space", lambda path: ("/usr/share/ollama/.ollama/models", 1_500_000_000))
    fake.faults(pull_rate=2_000_000_000)  # a few seconds: the fake is still sending when the pull is dropped
    rep = Rep()
    failures = models.pull_models(config(fake.url, "qwen3:8b", "tinyllama:1.1b"), rep)
    # a catalogue model: refused before the pull starts; another one: at its first layer
    assert failures[0] == ("qwen3:8b: not enough disk space for qwen3:8b: it needs 5.2 GB, 1.5 GB free on "
                           "/usr/share/ollama/.ollama/models (and 1 GB is kept spare); free some space, or set "
                           "ollama.models_dir to a larger disk")
    assert failures[1].startswith("tinyllama:1.1b: not enough disk space for tinyllama:1.1b: it needs 6")
    assert not [t for t in rep.progress_texts if "qwen3:8b" in t]  # never started
    assert rep.progress_texts == ["pulling tinyllama:1.1b: pulling manifest"]  # its size came, then it stopped
    from localaid.adapters.ollama import OllamaClient
    with OllamaClient(fake.url) as c:
        assert c.tags() == ()  # neither was written


def test_free_space_looks_at_the_nearest_existing_parent(tmp_path):
    where, free = models.free_space(str(tmp_path / "not/yet/there"))
    assert where == str(tmp_path) and free > 0


@pytest.mark.parametrize("need, ok", [(10**6, True), (10**18, False)])
def test_check_room_keeps_a_spare_gigabyte(tmp_path, need, ok):
    cfg = Config().ollama.__class__(models_dir=str(tmp_path))
    if ok:
        models.check_room(cfg, "m", need)
    else:
        with pytest.raises(models.NoRoom, match=f"free on {tmp_path}"):
            models.check_room(cfg, "m", need)


def test_localaid_pull_stops_a_model_the_disk_cannot_hold(fake, monkeypatch, tmp_path, capsys):  # noqa: F811
    from localaid.cli import pull as pull_cli
    monkeypatch.setattr(models, "free_space", lambda path: ("/srv/models", 1_500_000_000))
    fake.faults(pull_rate=2_000_000_000)
    cfg = tmp_path / "localaid.yaml"
    cfg.write_text(f"ollama:\n  port: {fake.url.rsplit(':', 1)[1]}\n  models: []\n")
    args = type("Args", (), {"config": str(cfg), "conf_d": None, "model": "tinyllama:1.1b"})()
    assert pull_cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("localaid pull: not enough disk space for tinyllama:1.1b: it needs 6") and "/srv/models" in err
    args.model = "qwen3:14b"  # a catalogue model: refused before anything is asked of Ollama
    assert pull_cli.main(args) == 1
    assert "it needs 9.3 GB, 1.5 GB free on /srv/models" in capsys.readouterr().err
    from localaid.adapters.ollama import OllamaClient
    with OllamaClient(fake.url) as c:
        assert c.tags() == ()


class QueuedRestartHost:
    """systemd as it is: RestartUnit only queues a job. Until the job runs (here: at the second
    look at the unit), the old Ollama still answers; then there is a gap with nothing listening."""

    def __init__(self):
        self.version, self.pending, self.looks, self.gap = "0.9.0", False, 0, False

    def daemon_reload(self):
        pass

    def enable(self, unit):
        pass

    def restart(self, unit):
        self.pending = True

    def unit_state(self, unit):
        from localaid.records import UnitState
        if self.pending:
            self.looks += 1
            if self.looks >= 2:  # the job runs: the old process goes, the new one is not up yet
                self.pending, self.gap, self.version = False, True, "0.9.1"
        return UnitState(unit, "loaded", "active", "running", job=self.pending)

    def wait_state(self, unit, states, timeout):
        from localaid.provision.host import Host
        return Host.wait_state(self, unit, states, timeout)

    def get(self, url, timeout=2.0):
        if self.gap:  # the first ask after the restart finds nothing; the next, the new process
            self.gap = False
            return None, None
        return 200, ({"version": self.version} if url.endswith("/api/version") else None)

    def monotonic(self):
        return 0.0

    def sleep(self, s):
        pass


def test_ollama_is_ready_only_once_its_restart_has_run(tmp_path):
    """After writing the drop-in the set-up job restarts Ollama and then pulls: it must not take
    the old process's answer for the new one's (the pulls then met the gap: connection refused)."""
    from localaid.provision.job import Reporter
    from localaid.provision.ollama.layout import Layout
    from localaid.provision.ollama.service import configure_service
    host = QueuedRestartHost()
    version = configure_service(Config().ollama, host, Reporter(None, terminal=False), restart=True, timeout=30,
                                layout=Layout(root=str(tmp_path)))
    assert version == "0.9.1" and not host.pending  # the new process answered, after the restart ran
