"""localaid.config StrictModes: files and directories only root can change, and symbolic links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localaid.config import ConfigError, load

ME = os.geteuid()
OTHER = 54321                       # a uid nobody has
needs_root = pytest.mark.skipif(ME != 0, reason="chown to another user needs root")
WHY = "localaid acts as root on its configuration, so no one but root may be able to change it"


def _tree(tmp_path: Path, main: str | None = "health: {interval: 2s}\n", conf_d: dict[str, str] | None = None) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    if main is not None:
        (d / "localaid.yaml").write_text(main)
    if conf_d is not None:
        (d / "conf.d").mkdir(mode=0o755)
        for name, text in conf_d.items():
            (d / "conf.d" / name).write_text(text)
    return d


def _load(d: Path, trusted_uid: int | None = ME, **kw):
    return load(str(d / "localaid.yaml"), str(d / "conf.d"), trusted_uid=trusted_uid, **kw)


def _errors(d: Path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(d, **kw)
    return [str(p).replace(str(d), "@") for p in info.value.errors]


# ------------------------------------------------------------------------------------ files

def test_world_writable_main_file_is_refused_and_still_checked(tmp_path):
    d = _tree(tmp_path, "health: {interval: fast}\n")
    (d / "localaid.yaml").chmod(0o666)
    assert _errors(d) == [
        f"@/localaid.yaml: refused: writable by its group and every user (mode 0666); {WHY} "
        "(fix: chmod go-w @/localaid.yaml)",
        '@/localaid.yaml:1: health.interval: expected a duration such as "2s", got "fast"']


def test_group_writable_conf_d_file_is_refused(tmp_path):
    d = _tree(tmp_path, conf_d={"10-ok.yaml": "gpu: {watch: false}\n", "20-bad.yaml": "gpu: {watch: true}\n"})
    (d / "conf.d" / "20-bad.yaml").chmod(0o664)
    assert _errors(d) == [
        f"@/conf.d/20-bad.yaml: refused: writable by its group (mode 0664); {WHY} "
        "(fix: chmod go-w @/conf.d/20-bad.yaml)"]


def test_safe_files_load_and_are_the_sources(tmp_path):
    d = _tree(tmp_path, conf_d={"10.yaml": "gpu: {watch: false}\n"})
    cfg = _load(d)
    assert cfg.health.interval == 2.0 and cfg.gpu.watch is False
    assert cfg.sources == (str(d / "localaid.yaml"), str(d / "conf.d" / "10.yaml"))


@needs_root
def test_file_owned_by_another_user_is_refused(tmp_path):
    d = _tree(tmp_path, conf_d={"10.yaml": "gpu: {watch: false}\n"})
    os.chown(d / "localaid.yaml", OTHER, -1)
    os.chown(d / "conf.d" / "10.yaml", OTHER, -1)
    (d / "conf.d" / "10.yaml").chmod(0o666)
    assert _errors(d, trusted_uid=0) == [
        f"@/localaid.yaml: refused: owned by uid {OTHER}, not root; {WHY} "
        "(fix: chown root: @/localaid.yaml)",
        f"@/conf.d/10.yaml: refused: owned by uid {OTHER}, not root and writable by its group and every user "
        f"(mode 0666); {WHY} (fix: chown root: @/conf.d/10.yaml && chmod go-w @/conf.d/10.yaml)"]


# ------------------------------------------------------------------------------ directories

def test_group_writable_conf_d_is_refused_once(tmp_path):
    d = _tree(tmp_path, conf_d={"10.yaml": "{}\n", "20.yaml": "{}\n"})
    (d / "conf.d").chmod(0o775)
    assert _errors(d) == [f"@/conf.d: refused: writable by its group (mode 0775); {WHY} (fix: chmod go-w @/conf.d)"]


def test_empty_unsafe_conf_d_reads_nothing_and_is_not_reported(tmp_path):
    d = _tree(tmp_path, conf_d={"README": "not read\n"})
    (d / "conf.d").chmod(0o777)
    assert _load(d).health.interval == 2.0


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_directory_holding_the_main_file_must_not_be_writable(tmp_path, mode):
    d = _tree(tmp_path, conf_d={"10.yaml": "{}\n"})
    d.chmod(mode)
    who = "its group" if mode == 0o775 else "its group and every user"
    # reported once, for the first file it holds (conf.d lies in it too)
    assert _errors(d) == [f"@/localaid.yaml: refused: directory @ is writable by {who} (mode {mode:04o}); "
                          f"{WHY} (fix: chmod go-w @)"]


def test_a_sticky_directory_may_hold_the_main_file_but_conf_d_may_not_be_sticky(tmp_path):
    """In a sticky directory (as /tmp: `localaid config check /tmp/new.yaml`) nobody but root can
    rename or replace root's file; conf.d, all of whose files are read, must not be writable."""
    d = _tree(tmp_path, conf_d={"10.yaml": "{}\n"})
    d.chmod(0o1777)
    assert _load(d).health.interval == 2.0
    (d / "conf.d").chmod(0o1777)
    assert _errors(d) == [f"@/conf.d: refused: writable by its group and every user (mode 1777); "
                          f"{WHY} (fix: chmod go-w @/conf.d)"]


def test_directories_above_may_be_world_writable_only_when_sticky(tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    d = _tree(up)
    up.chmod(0o1777)                     # like /tmp: nobody can replace what root owns in it
    assert _load(d).health.interval == 2.0
    up.chmod(0o777)
    assert _errors(d) == [f"@/localaid.yaml: refused: directory {up} is writable by its group and every user "
                          f"(mode 0777); {WHY} (fix: chmod go-w {up})"]


@needs_root
def test_directory_owned_by_another_user_is_refused(tmp_path):
    d = _tree(tmp_path, conf_d={"10.yaml": "{}\n"})
    os.chown(d / "conf.d", OTHER, -1)
    assert _errors(d, trusted_uid=0) == [
        f"@/conf.d: refused: owned by uid {OTHER}, not root; {WHY} (fix: chown root: @/conf.d)"]


# ------------------------------------------------------------------------------ who checks

def test_not_checked_when_not_running_as_root(tmp_path, monkeypatch):
    d = _tree(tmp_path)
    (d / "localaid.yaml").chmod(0o666)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert load(str(d / "localaid.yaml"), None).health.interval == 2.0


def test_checked_by_default_when_running_as_root(tmp_path, monkeypatch):
    d = _tree(tmp_path)
    (d / "localaid.yaml").chmod(0o666)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ConfigError, match=r"refused: .*writable by its group and every user \(mode 0666\)"):
        load(str(d / "localaid.yaml"), None)


def test_trusted_uid_none_checks_nothing(tmp_path):
    d = _tree(tmp_path, conf_d={"10.yaml": "{}\n"})
    (d / "localaid.yaml").chmod(0o666)
    d.chmod(0o777)
    assert _load(d, trusted_uid=None).health.interval == 2.0


# ---------------------------------------------------------------------------- symbolic links

def test_symlink_in_conf_d_is_refused_naming_its_target(tmp_path):
    d = _tree(tmp_path, conf_d={})
    (tmp_path / "shared.yaml").write_text("gpu: {watch: false}\n")
    (d / "conf.d" / "10-shared.yaml").symlink_to("../../shared.yaml")
    (d / "conf.d" / "20-gone.yaml").symlink_to("/nonexistent/x.yaml")
    (d / "conf.d" / "30-other.yml").symlink_to("../../shared.yaml")     # not *.yaml: not read at all
    tail = ("conf.d takes regular files only, so that what is read is what `ls -l` there shows: "
            "copy the file there instead")
    for trusted_uid in (ME, None):                  # refused whether or not ownership is checked
        assert _errors(d, trusted_uid=trusted_uid) == [
            f"@/conf.d/10-shared.yaml: is a symbolic link (to ../../shared.yaml); {tail}",
            f"@/conf.d/20-gone.yaml: is a symbolic link (to /nonexistent/x.yaml); {tail}"]


def test_main_file_symlink_is_followed_and_its_target_directory_checked(tmp_path):
    d = _tree(tmp_path, main=None)
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (real / "localaid.yaml").write_text("health: {interval: 3s}\n")
    (d / "localaid.yaml").symlink_to(real / "localaid.yaml")
    cfg = _load(d)
    assert cfg.health.interval == 3.0 and cfg.sources == (str(d / "localaid.yaml"),)
    real.chmod(0o775)
    assert _errors(d) == [f"@/localaid.yaml: refused: directory {real} is writable by its group (mode 0775); "
                          f"{WHY} (fix: chmod go-w {real})"]


def test_conf_d_directory_symlink_is_followed_and_checked(tmp_path):
    d = _tree(tmp_path)
    real = tmp_path / "conf.real"
    real.mkdir(mode=0o755)
    (real / "10.yaml").write_text("gpu: {watch: false}\n")
    (d / "conf.d").symlink_to(real)
    assert _load(d).gpu.watch is False
    real.chmod(0o777)
    assert _errors(d) == [f"@/conf.d: refused: writable by its group and every user (mode 0777); {WHY} "
                          "(fix: chmod go-w @/conf.d)"]
