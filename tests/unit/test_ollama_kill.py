"""A kill at any step of an Ollama install is completed or rolled back by the next run.

A forked child runs the provisioning job and dies with os._exit(137) just before step S (no
finally, no atexit: as SIGKILL does), or by a real SIGKILL that the install script sends it
half-way; the parent then runs provisioning again with the same fakes (tests/fakes/ollama/world.py:
a temporary root, the fake `ollama serve` as the service, a stand-in install script) and checks
the end state: which Ollama runs, what is on disk, what ran, and that nothing is left behind.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from localaid import log, paths, progress
from localaid.provision.job import Reporter
from localaid.provision.ollama import JOB, UNIT, Snapshot, provision, upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes" / "ollama"))

from world import World  # noqa: E402


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "progress"))
    w = World(tmp_path)
    w.install("0.9.0")
    w.host.restart(UNIT)
    yield w
    w.close()


def killed_child(w: World, config, step: str | None) -> int:
    """Run provisioning in a child that dies at `step` (or however the script makes it); its exit
    code, or -signal."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            def hook(name):
                if name == step:
                    os._exit(137)
            code = provision(config, Reporter(JOB, terminal=False), w.host, w.layout, hook)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def second_run(w: World, config) -> int:
    log.stream = io.StringIO()
    return provision(config, Reporter(JOB, terminal=False), w.host, w.layout)


def assert_clean(w: World) -> None:
    """No journal, no snapshot (whole or partial), no maintenance marker left behind."""
    assert not os.path.exists(w.layout.journal)
    assert not os.path.exists(w.layout.backup) and not os.path.exists(w.layout.backup + ".partial")
    assert not os.listdir(w.layout.maintenance_dir) if os.path.isdir(w.layout.maintenance_dir) else True


def assert_serving(w: World, config, version: str) -> None:
    assert w.binary_version() == version and w.lib_version() == version
    assert w.served()[-1] == version
    assert w.host.get(config.ollama.url + "/api/version") == (200, {"version": version})


# step killed at → (what the next run did, install script runs in all, versions served in all)
AT_STEP = {
    "obtain": ("completed", ["0.9.1"], ["0.9.0", "0.9.1"]),
    "snapshot": ("rolled back", ["0.9.1"], ["0.9.0", "0.9.1"]),
    "run": ("rolled back", ["0.9.1"], ["0.9.0", "0.9.0", "0.9.1"]),
    "configure": ("completed", ["0.9.1"], ["0.9.0", "0.9.1"]),
    "commit": ("completed", ["0.9.1"], ["0.9.0", "0.9.1"]),
    "pull": ("completed", ["0.9.1"], ["0.9.0", "0.9.1"]),
}


@pytest.mark.parametrize("step", list(AT_STEP))
def test_a_kill_before_each_step_is_finished_by_the_next_run(world, step):
    w = world
    config = w.config(version="0.9.1", models=["tinyllama"])
    assert killed_child(w, config, step) == 137
    j = w.layout.journal
    assert '"step": "%s"' % step in Path(j).read_text()
    # the good copy is there for the next run from the script on, until commit dropped it
    assert Snapshot(w.layout.backup).exists == (step in ("run", "configure", "commit"))
    assert second_run(w, config) == 0
    did, runs, served = AT_STEP[step]
    out = log.stream.getvalue()
    assert f"interrupted Ollama install {did}" in out, out
    assert w.script_runs() == runs  # a completed install never runs the script twice
    assert w.served() == served  # a rollback first put 0.9.0 back and started it
    assert_serving(w, config, "0.9.1")
    assert_clean(w)
    assert progress.read(JOB).state == "done"
    pulled = {m["name"] for m in w.host.get(config.ollama.url + "/api/tags")[1]["models"]}
    assert pulled == {"tinyllama:latest", "nomic-embed-text:latest"}  # and Open WebUI's embedding model


def test_a_sigkill_in_the_middle_of_the_script_is_rolled_back(world):
    """The script removed the libraries, left half a binary and killed the job (SIGKILL): the next
    run puts the snapshot back and starts 0.9.0 before it installs again."""
    w = world
    config = w.config(version="0.9.1")
    w.fault("kill")
    assert killed_child(w, config, None) == -9
    assert w.binary_version() == "broken" and w.lib_version() == "missing"
    assert Snapshot(w.layout.backup).exists
    w.fault(None)
    assert second_run(w, config) == 0
    assert "interrupted Ollama install rolled back (interrupted during run; previous Ollama 0.9.0 restored " \
           "and running)" in log.stream.getvalue()
    assert w.script_runs() == ["0.9.1", "0.9.1"]
    assert w.served() == ["0.9.0", "0.9.0", "0.9.1"]
    assert_serving(w, config, "0.9.1")
    assert_clean(w)


def test_after_a_sigkill_mid_script_a_failing_run_still_restores_the_good_copy(world):
    """The old failure: the next run snapshotted the half-installed binary and dropped the good
    copy. Now it restores first, so its own snapshot is of 0.9.0 and its failure puts 0.9.0 back."""
    w = world
    config = w.config(version="0.9.1")
    w.fault("kill")
    assert killed_child(w, config, None) == -9
    w.fault("fail")
    assert second_run(w, config) == 1
    p = progress.read(JOB)
    assert p.state == "failed" and p.text == ("ollama setup failed: install script exited with status 1; "
                                              "previous Ollama 0.9.0 restored and running")
    assert_serving(w, config, "0.9.0")
    assert_clean(w)


def test_a_kill_during_the_rollback_is_rolled_back_again(world):
    w = world
    config = w.config(version="0.9.1")
    w.fault("fail")
    assert killed_child(w, config, "rollback") == 137
    assert w.lib_version() == "missing"  # the failed script removed them; the rollback never ran
    w.fault(None)
    assert second_run(w, config) == 0
    assert "interrupted Ollama install rolled back (install script exited with status 1; previous Ollama " \
           "0.9.0 restored and running)" in log.stream.getvalue()
    assert w.served() == ["0.9.0", "0.9.0", "0.9.1"]
    assert_serving(w, config, "0.9.1")
    assert_clean(w)


def test_a_snapshot_left_by_a_failed_rollback_is_kept_not_replaced(tmp_path):
    """take() never drops a whole snapshot it finds: it is the last copy known to be good."""
    binary, lib = tmp_path / "bin" / "ollama", tmp_path / "lib" / "ollama"
    binary.parent.mkdir()
    lib.mkdir(parents=True)
    binary.write_text("good")
    (lib / "libggml.so").write_text("good lib")
    snap = Snapshot(str(tmp_path / "backup"), str(binary), str(lib))
    assert snap.take() == "taken"
    binary.unlink()
    binary.write_text("half")  # what a failed rollback could leave live
    (tmp_path / "backup.partial").mkdir()  # and a snapshot of it begun and killed
    assert snap.take() == "kept" and not (tmp_path / "backup.partial").exists()
    assert snap.restore()
    assert binary.read_text() == "good" and (lib / "libggml.so").read_text() == "good lib"


def test_an_upgrade_killed_half_way_is_completed_by_the_setup_job(world):
    """`localaid upgrade ollama` and the setup job share the journal: whichever runs next finishes."""
    w = world
    config = w.config(version="0.9.0")
    pid = os.fork()
    if pid == 0:
        try:
            def hook(name):
                if name == "configure":
                    os._exit(137)
            upgrade(config, Reporter(None, terminal=False), w.host, "0.9.1", w.layout, hook)
        finally:
            os._exit(99)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 137
    w.host.stop(UNIT)  # and ollama.service stopped meanwhile
    assert second_run(w, w.config()) == 0  # no version pinned: the completed 0.9.1 stays
    assert "interrupted Ollama install completed" in log.stream.getvalue()
    assert w.script_runs() == ["0.9.1"]
    assert_serving(w, config, "0.9.1")
    assert_clean(w)


def test_upgrade_and_asking_again(world, capsys):
    w = world
    config = w.config(version="0.9.0")
    rep = Reporter(None, terminal=True)
    assert upgrade(config, rep, w.host, "0.9.1", w.layout) == 0
    out = capsys.readouterr().out
    assert "Ollama 0.9.1 installed and running" in out and "pins 0.9.0" in out
    assert upgrade(config, rep, w.host, "0.9.1", w.layout) == 0
    assert "Ollama is already 0.9.1 (running: 0.9.1); nothing to do" in capsys.readouterr().out
    assert w.script_runs() == ["0.9.1"]
    w.fault("fail")
    assert upgrade(config, rep, w.host, "0.9.0", w.layout) == 1
    out = capsys.readouterr().out
    assert "error: upgrade failed: install script exited with status 1; previous Ollama 0.9.1 restored and " \
           "running" in out and "  | ERROR: simulated installer failure" in out
    assert_serving(w, config, "0.9.1")
    assert_clean(w)
