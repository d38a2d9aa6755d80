"""What root writes for Ollama: the models directory's owner (never through a link), the
drop-in (0644, no secrets, paths quoted for systemd) and ollama.environment's file (0600)."""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import pytest

from localaid import log, paths, progress
from localaid.provision.host import Result
from localaid.provision.job import JobError, Reporter
from localaid.provision.ollama import (
    JOB, UNIT, ensure_models_dir, prepare, provision, render_dropin, write_dropin)
from localaid.provision.ollama import service

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes" / "ollama"))

from world import World  # noqa: E402

NOBODY = (65534, 65534)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")


def owner_mode(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def victim(tmp_path):
    """A stand-in for /etc: root's directory and files that no link may lead root to change."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    (etc / "shadow").write_text("secret\n")
    os.chmod(etc / "shadow", 0o600)
    return etc


def before(victim: Path) -> dict:
    return {p: owner_mode(p) for p in (victim, victim / "shadow")}


# ----------------------------------------------------------------------------- models directory
@as_root
def test_the_chown_walk_follows_no_link(tmp_path, victim):
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    (models / "blobs" / "sha256-1").write_text("blob")
    os.symlink(victim, models / "etc-dir")
    os.symlink(victim / "shadow", models / "blobs" / "shadow-file")
    os.symlink(tmp_path / "nowhere", models / "dangling")
    os.link(victim / "shadow", models / "hardlink")  # as a user could where protected_hardlinks is off
    was = before(victim)
    done = ensure_models_dir(str(models), NOBODY)
    assert done == f"gave {models} to user ollama (5 entries inside changed owner; 1 hard-linked files left as " \
                   "they were)"
    assert before(victim) == was  # /etc's owner and modes unchanged
    for p in (models, models / "blobs", models / "blobs" / "sha256-1", models / "etc-dir",
              models / "blobs" / "shadow-file", models / "dangling"):
        assert owner_mode(p)[:2] == NOBODY, p  # the links themselves are the user's now
    assert ensure_models_dir(str(models), NOBODY) is None  # nothing to do the second time


@as_root
def test_a_models_dir_that_is_a_link_is_refused(tmp_path, victim):
    link = tmp_path / "models"
    os.symlink(victim, link)
    was = before(victim)
    with pytest.raises(JobError, match=rf"ollama.models_dir {link} is a symbolic link \(to {victim}\): .* "
                                       "set models_dir to the directory itself"):
        ensure_models_dir(str(link), NOBODY)
    assert before(victim) == was


@as_root
def test_a_models_dir_swapped_for_a_link_meanwhile_is_refused(tmp_path, victim, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    real_lstat = os.lstat

    def swapping_lstat(path, *a, **kw):  # the user swaps the directory right after the check
        st = real_lstat(path, *a, **kw)
        if str(path) == str(models) and not models.is_symlink():
            models.rename(tmp_path / "old")
            os.symlink(victim, models)
        return st
    monkeypatch.setattr(service.os, "lstat", swapping_lstat)
    was = before(victim)
    with pytest.raises(JobError, match="replaced by a link meanwhile"):
        ensure_models_dir(str(models), NOBODY)
    assert before(victim) == was


def test_a_new_models_dir_is_made_for_the_user(tmp_path):
    models = tmp_path / "srv" / "models"
    me = (os.getuid(), os.getgid())
    assert ensure_models_dir(str(models), me) == f"created {models} for user ollama"
    assert owner_mode(models) == (*me, 0o755)


# ------------------------------------------------------------------------- drop-in, environment
SECRET = 'hf_S3CR3T "en" $HOME `id` \\x 100%'


def test_environment_goes_to_a_0600_file_and_never_into_the_drop_in(tmp_path, monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "progress"))
    w = World(tmp_path)
    w.install("0.9.1")
    argvs, run = [], w.host.run
    monkeypatch.setattr(w.host, "run", lambda argv, **kw: argvs.append(argv) or run(argv, **kw))
    try:
        config = w.config(version="0.9.0", environment={"HF_TOKEN": SECRET, "OLLAMA_FLASH_ATTENTION": "1"})
        assert provision(config, Reporter(JOB, terminal=False), w.host, w.layout) == 0
        env, dropin = Path(w.layout.env_file), Path(w.layout.dropin)
        assert stat.S_IMODE(env.stat().st_mode) == 0o600 and stat.S_IMODE(dropin.stat().st_mode) == 0o644
        assert "S3CR3T" not in dropin.read_text() and "HF_TOKEN" not in dropin.read_text()
        assert f"EnvironmentFile=-{env}" in dropin.read_text().splitlines()
        assert env.read_text().splitlines()[2:] == ['HF_TOKEN="hf_S3CR3T \\"en\\" \\$HOME \\`id\\` \\\\x 100%"',
                                                   'OLLAMA_FLASH_ATTENTION="1"']
        # a file someone made readable is put back to 0600, and the service restarted for it
        os.chmod(env, 0o644)
        assert write_dropin(config.ollama, w.layout) is True
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
        assert write_dropin(config.ollama, w.layout) is False
        # no value of it on any command line the job ran
        assert argvs and not [a for a in argvs if "S3CR3T" in " ".join(a)]
    finally:
        w.close()
    assert w.host.unit_state(UNIT).active_state == "inactive"


def test_paths_in_the_drop_in_are_quoted_for_systemd(tmp_path):
    w = World(tmp_path)
    models = '/srv/my "models" 100%'
    text = render_dropin(w.config(models_dir=models).ollama, ("/dev/nvidia0",), env_file="/etc/a b/ollama%.env")
    lines = text.splitlines()
    for line in ('Environment="OLLAMA_MODELS=/srv/my \\"models\\" 100%%"',
                 'ReadWritePaths="-/srv/my \\"models\\" 100%%"',
                 'EnvironmentFile="-/etc/a b/ollama%%.env"',
                 "ReadWritePaths=-/usr/share/ollama", "DeviceAllow=/dev/nvidia0 rw"):
        assert line in lines, line
    for line in lines:  # no lone % left for systemd to expand
        assert "%" not in line.replace("%%", "") or line.startswith("#"), line


def test_prepare_makes_user_ollama_as_the_script_would_and_gives_it_the_models_dir(tmp_path, monkeypatch):
    """The stage run outside the setup unit's sandbox (ExecStartPre=+)."""
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "progress"))
    w = World(tmp_path)
    calls, users = [], {}

    def ids(name):
        return users[name]

    def run(argv, **kw):
        calls.append(argv)
        users["ollama"] = (os.getuid(), os.getgid())
        return Result(0, ())
    monkeypatch.setattr(w.host, "ids", ids)
    monkeypatch.setattr(w.host, "run", run)
    models = tmp_path / "srv" / "models"
    config = w.config(models_dir=str(models))
    assert prepare(config, Reporter(JOB, terminal=False), w.host, w.layout) == 0
    assert calls == [["useradd", "-r", "-s", "/bin/false", "-U", "-m", "-d", "/usr/share/ollama", "ollama"]]
    assert models.is_dir() and "created user ollama" in log.stream.getvalue()
    assert prepare(config, Reporter(JOB, terminal=False), w.host, w.layout) == 0
    assert len(calls) == 1  # the user exists: nothing to do
    # useradd failing is one line with its reason
    users.clear()
    monkeypatch.setattr(w.host, "run", lambda argv, **kw: Result(9, ("useradd: group ollama exists",)))
    assert prepare(config, Reporter(JOB, terminal=False), w.host, w.layout) == 1
    assert progress.read(JOB).text == "ollama setup failed: cannot create user ollama: useradd: group ollama exists"
