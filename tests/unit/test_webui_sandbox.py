"""Installers run as the service user in a unit of their own, and secrets stay off command lines;
failures (a full disk, a changed backup, no user and a read-only /etc) leave the old version
serving and say why.

The Host double (test_webui_upgrade.FakeHost) runs the command inside each `systemd-run` the
real sandbox code builds, and records every command line as ps would show it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat

import pytest

from localaid.provision import safefs, webui
from localaid.provision.job import JobError
from localaid.provision.webui import indexes, sandbox
from localaid.provision.webui.installer import WebUIHost
from localaid.provision.webui.venv import MIN_FREE
from test_webui_upgrade import (
    ORIGINAL_DB, FakeHost, Killed, config, db_path, env, installed, job, provision, upgrade)  # noqa: F401

SECRETS = ("s3cr3t-own-index", "s3cr3t-own-extra", "s3cr3t-own-links", "s3cr3t-machine-extra",
           "s3cr3t-machine-env")


def cfg(**kw):
    c = config()
    return dataclasses.replace(c, webui=dataclasses.replace(c.webui, **kw))


def secret_config(installer: str):
    return cfg(installer=installer, index_url=f"https://u:{SECRETS[0]}@mirror.example/simple",
                  extra_index_urls=(f"https://u:{SECRETS[1]}@extra.example/simple",),
                  find_links=(f"https://u:{SECRETS[2]}@links.example/wheels/",))


@pytest.mark.parametrize("installer", ["auto", "pip"])
def test_no_command_line_holds_a_secret(env, installer):  # noqa: F811
    layout, host = env
    host.pip_conf_lines = [f"global.extra-index-url='https://u:{SECRETS[3]}@m.example/simple'",
                           f":env:.index-url='https://u:{SECRETS[4]}@env.example/simple'"]
    assert provision(layout, host, secret_config(installer)) == 0
    assert host.units, "nothing ran in a build unit"
    for argv in host.argvs:
        assert not any(s in arg for s in SECRETS for arg in argv), argv
    install = next(u for u in host.units if u["argv"][-1] == "open-webui==0.12.4")
    e = install["env"]
    if installer == "auto":  # uv: the own index wins, extra indexes and wheel places from the config
        assert SECRETS[0] in e["UV_INDEX_URL"] and SECRETS[1] in e["UV_EXTRA_INDEX_URL"]
        assert SECRETS[2] in e["UV_FIND_LINKS"]
    assert SECRETS[0] in e["PIP_INDEX_URL"] and SECRETS[2] in e["PIP_FIND_LINKS"]
    assert SECRETS[3] in e["PIP_EXTRA_INDEX_URL"] and SECRETS[1] in e["PIP_EXTRA_INDEX_URL"]
    assert e["PIP_CONFIG_FILE"] == os.devnull and e["UV_NO_CONFIG"] == "1"  # the service user's files unread
    assert e["HOME"] == "/tmp" and e["UV_CACHE_DIR"] == layout.uv_cache and e["PIP_CACHE_DIR"] == layout.pip_cache
    assert install["env_mode"] == 0o600 and stat.S_IMODE(os.stat(layout.build_env_dir).st_mode) == 0o700
    assert os.listdir(layout.build_env_dir) == []  # removed once the unit ended
    for u in host.units:  # every installer step: the service user, no way back to root
        assert {"User=open-webui", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "ProtectSystem=strict",
                "PrivateTmp=yes", "ProtectHome=yes"} <= set(u["props"]), u


def test_allow_source_builds_drops_the_wheels_only_options(env):  # noqa: F811
    layout, host = env
    host.pip_conf_lines = ["global.no-index='true'"]
    assert provision(layout, host, cfg(installer="auto", allow_source_builds=True)) == 0
    runs = [c[1] for c in host.calls if c[0] == "run"]
    assert not any("--no-build" in r or "--only-binary" in r for r in runs)
    marker = json.load(open(os.path.join(layout.venv("0.12.4"), webui.COMPLETE_MARKER)))
    assert marker["wheels_only"] is False and marker["user"] == "open-webui"


# ------------------------------------------------------------------------ the real client
@pytest.fixture
def fake_systemd(tmp_path, monkeypatch):
    """systemd-run and systemctl on PATH as scripts: systemd-run behaves as $BEHAVE says."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    (bindir / "systemd-run").write_text(f'#!/bin/sh\necho "systemd-run $*" >> {log}\n'
                                        'case "$BEHAVE" in hang) exec sleep 60;; exec) exit 217;; esac\n'
                                        'echo "Installed 3 packages in 5ms"\nexit 0\n')
    (bindir / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {log}\nexit 5\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    jail = sandbox.Jail(sandbox.unit_name("venv-9"), "open-webui", str(tmp_path / "run" / "u.env"),
                        (str(tmp_path / "venvs"),))
    return jail, log


def test_a_timeout_stops_the_build_unit_not_only_the_client(fake_systemd, monkeypatch):
    jail, log = fake_systemd
    monkeypatch.setenv("BEHAVE", "hang")
    r = WebUIHost().sandboxed(["uv", "pip", "install", "x"], jail, {"A": "1"}, timeout=1)
    assert r.timed_out and r.rc == 124 and f"the build unit {jail.unit} was stopped" in r.tail[-1]
    calls = log.read_text().splitlines()
    assert calls[0] == f"systemctl stop --quiet {jail.unit}"  # one left by a killed job, first
    assert calls[1].startswith(f"systemd-run --unit={jail.unit}") and "--property=RuntimeMaxSec=31s" in calls[1]
    assert calls[2] == f"systemctl stop --quiet {jail.unit}"  # the timeout stops the unit itself
    assert not os.path.exists(jail.env_file)


def test_output_streams_and_an_unstartable_unit_says_why(fake_systemd, monkeypatch):
    jail, log = fake_systemd
    lines = []
    r = WebUIHost().sandboxed(["uv"], jail, {}, timeout=30, on_line=lines.append)
    assert r.ok and lines == ["Installed 3 packages in 5ms"]
    monkeypatch.setenv("BEHAVE", "exec")
    r = WebUIHost().sandboxed(["uv"], jail, {}, timeout=30)
    assert r.rc == 217 and "systemd could not start the build unit" in r.last and "journalctl -u" in r.last


def test_the_environment_file_reads_back_exactly(tmp_path):
    from test_webui_upgrade import parse_env_file
    values = {"URL": "https://u:p%40ss@h/simple", "ODD": 'a "b" $HOME `x` \\ c', "SP": "a b"}
    path = str(tmp_path / "d" / "e.env")
    sandbox.write_env(path, values)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
    assert parse_env_file(open(path).read()) == values


# ---------------------------------------------------------------------- the pip configuration
def test_pip_configuration_is_read_from_the_files_without_a_system_pip(tmp_path, monkeypatch):
    glob, user = tmp_path / "pip.conf", tmp_path / "home" / ".config" / "pip" / "pip.conf"
    user.parent.mkdir(parents=True)
    glob.write_text("[global]\nindex-url = https://global/simple\nfind-links = /opt/w\n[download]\ndest = /x\n")
    user.write_text("[global]\nindex-url = https://user/simple\n[install]\nno_index = true\n")
    monkeypatch.setattr(indexes, "PIP_FILES", (str(glob), "~/.config/pip/pip.conf"))
    got = indexes.pip_files({"HOME": str(tmp_path / "home"), "PIP_EXTRA_INDEX_URL": "https://env/simple"})
    assert got == {"index-url": "https://user/simple", "find-links": "/opt/w", "no-index": "true",
                   "extra-index-url": "https://env/simple"}  # later files win, PIP_* last; no [download]

    class NoPip(FakeHost):
        def run(self, argv, **kw):
            from localaid.provision.host import Result
            return Result(1, ("No module named pip",))
    monkeypatch.setattr(indexes, "root_env", lambda: {"HOME": str(tmp_path / "home")})
    assert indexes.pip_config(NoPip(webui.Layout()), "/usr/bin/python3")["index-url"] == "https://user/simple"


def test_build_environment_passes_proxies_and_reads_no_user_configuration(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy:3128")
    monkeypatch.setenv("PYTHONPATH", "/evil")
    e = indexes.build_env(config(), {"cert": "/etc/ca.pem"}, "/c/uv", "/c/pip")
    assert e["https_proxy"] == "http://proxy:3128" and "PYTHONPATH" not in e
    assert e["PIP_CERT"] == "/etc/ca.pem" and e["SSL_CERT_FILE"] == "/etc/ca.pem"
    assert e["UV_PYTHON_DOWNLOADS"] == "never" and e["PYTHONNOUSERSITE"] == "1"


# ------------------------------------------------------------------------------- disk space
def test_preflight_counts_the_database_and_empties_the_caches_first(env, tmp_path):  # noqa: F811
    layout, host = env
    installed(layout, host, tmp_path)
    with open(db_path(layout), "wb") as f:
        f.write(b"\0" * 3 * 2**20)  # a 3 MiB database: its backup needs that much too
    cached = os.path.join(layout.uv_cache, "archive")

    def fill_cache():
        os.makedirs(layout.uv_cache, exist_ok=True)
        with open(cached, "wb") as f:
            f.write(b"cached")
    fill_cache()
    host.free = MIN_FREE + 2 * 2**20  # room for the venv, not for the venv and the backup
    assert upgrade(layout, host, config(), "0.12.5") == 1
    text = job(tmp_path)["text"]
    assert "not enough disk space" in text and "for the backup of webui.db" in text, text
    assert not os.path.exists(cached)  # emptied before giving up
    assert host.serving == "0.12.4" and host.active and webui.current_version(layout) == "0.12.4"

    fill_cache()
    real = host.free_bytes
    host.free_bytes = lambda path: real(path) + (0 if os.path.exists(cached) else 2 * 2**20)  # the cache's share
    assert upgrade(layout, host, config(), "0.12.5") == 0
    assert host.serving == "0.12.5" and not os.path.exists(cached)


def test_a_full_disk_while_backing_up_rolls_back(env, tmp_path, monkeypatch):  # noqa: F811
    layout, host = env
    installed(layout, host, tmp_path)
    real = safefs.write

    def write(dfd, name, source, mode, uid=-1, gid=-1):
        if name.startswith("webui-"):  # the copy the rollback needs: half written, then ENOSPC
            real(dfd, safefs.tmp_name(name) + "-partial", b"half", 0o600)
            os.unlink(safefs.tmp_name(name) + "-partial", dir_fd=dfd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(dfd, name, source, mode, uid, gid)
    monkeypatch.setattr(safefs, "write", write)
    assert upgrade(layout, host, config(), "0.12.5") == 1
    p = job(tmp_path)
    assert p["state"] == "failed"
    assert "cannot back up webui.db" in p["text"] and "No space left on device" in p["text"], p["text"]
    assert "rolled back to 0.12.4, database untouched" in p["text"], p["text"]
    assert host.serving == "0.12.4" and host.active and webui.current_version(layout) == "0.12.4"
    assert open(db_path(layout), "rb").read() == ORIGINAL_DB and os.listdir(layout.backups) == []
    assert not os.path.exists(layout.journal) and not os.path.exists(layout.maintenance)


def test_a_backup_changed_since_it_was_taken_is_not_restored(env, tmp_path):  # noqa: F811
    layout, host = env
    installed(layout, host, tmp_path)
    host.unhealthy.add("0.12.5")

    def hook(at):
        if at == "rollback":
            raise Killed(at)
    with pytest.raises(Killed):
        upgrade(layout, host, config(), "0.12.5", hook)
    backup = webui.journal(layout).read()["backup"]
    with open(backup, "wb") as f:
        f.write(b"not the database that was backed up")
    assert provision(layout, host, config()) == 1
    assert "is not the file taken before the upgrade" in job(tmp_path)["text"]
    assert open(db_path(layout), "rb").read() != b"not the database that was backed up"


# ---------------------------------------------------------------------------------- the user
def test_without_the_user_a_read_only_etc_is_named(env, tmp_path, monkeypatch):  # noqa: F811
    layout, host = env

    def ensure_user(name, home, comment=""):
        raise JobError("cannot create system user open-webui: useradd: cannot lock /etc/passwd; try again later.")
    host.ensure_user = ensure_user
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if p.endswith("/etc") else real_access(p, m, **kw))
    os.makedirs(layout.p("/etc"), exist_ok=True)
    assert provision(layout, host, config()) == 1
    text = job(tmp_path)["text"]
    assert "/etc is read-only" in text and "reinstall" in text and "useradd --system" in text, text
    assert not os.path.exists(layout.venvs) or webui.current_version(layout) is None


def test_the_legacy_cache_of_root_goes_with_the_next_build(env, tmp_path):  # noqa: F811
    layout, host = env
    os.makedirs(os.path.join(layout.legacy_cache, "uv", "archive-v0"))
    assert provision(layout, host, config()) == 0
    assert not os.path.exists(layout.legacy_cache)


def test_no_room_for_the_data_backup_ends_the_upgrade_before_the_stop(env, tmp_path, monkeypatch):  # noqa: F811
    """The backup of all of Open WebUI's data is taken while the old version serves: without room
    for it the upgrade ends there, with no outage and nothing to roll back."""
    layout, host = env
    installed(layout, host, tmp_path)
    host.calls.clear()
    from localaid.provision.webui import snapshot
    monkeypatch.setattr(snapshot, "SPARE", 10**15)  # room for the venv (the preflight), none for the backup
    assert upgrade(layout, host, config(), "0.12.5") == 1
    p = job(tmp_path)
    assert p["state"] == "failed" and "not enough space in" in p["text"] and "0.12.4 keeps serving" in p["text"], p
    assert not [c for c in host.calls if c[0] == "stop"] and host.serving == "0.12.4" and host.active
    assert webui.current_version(layout) == "0.12.4" and not os.path.exists(layout.journal)
