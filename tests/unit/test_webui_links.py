"""Root never follows a link the service user controls.

The data dir and the venvs handed over belong to open-webui, which runs code by design. Here the
fake service user plants symbolic links (and a FIFO, and a hard link) at every name root touches
there, all pointing outside; backup, rollback, venv hand-over and clean-up must leave every file
outside exactly as it was, and the database must come back byte for byte.
"""

from __future__ import annotations

import os
import signal
import stat

import pytest

from localaid import paths
from localaid.provision import safefs, webui
from test_webui_upgrade import DATA, ORIGINAL_DB, FakeHost, store_backups, config, db_path, installed, provision, upgrade

ROOT = os.geteuid() == 0
SERVICE_IDS = (4242, 4242) if ROOT else (os.getuid(), os.getgid())  # as root: ownership changes show
DB_NAMES = ("webui.db", "webui.db-wal", "webui.db-shm", "webui.db-journal")


class PlantingHost(FakeHost):
    """The service user plants links when the new version starts (and in the venv it is given)."""

    def __init__(self, layout, outside):
        super().__init__(layout)
        self.outside = outside
        self.plant_on_start: set[str] = set()
        self.plant_in_venv = False

    def ids(self, name):
        return SERVICE_IDS

    def start(self, unit):
        super().start(unit)
        if unit != webui.UNIT:
            return
        if self.serving in self.plant_on_start:
            plant_db_links(self.layout.p(DATA), self.outside)

    def _run(self, argv, on_line):
        rc, tail = super()._run(argv, on_line)
        if self.plant_in_venv and "install" in argv and argv[-1].startswith("open-webui=="):
            venv = os.path.dirname(os.path.dirname(argv[argv.index("--python") + 1] if "--python" in argv
                                                   else argv[0]))
            site = os.path.join(venv, "lib", "python3.11", "site-packages")
            if os.path.isdir(site):
                os.symlink(str(self.outside / "tree"), os.path.join(site, "evil-dir"))
                os.symlink(str(self.outside / "marker"), os.path.join(venv, webui.COMPLETE_MARKER))
                os.symlink(str(self.outside / "marker-tmp"),
                           os.path.join(venv, safefs.tmp_name(webui.COMPLETE_MARKER)))
        return rc, tail


def plant_db_links(data: str, outside) -> None:
    for name in DB_NAMES:
        for planted in (name, safefs.tmp_name(name)):
            p = os.path.join(data, planted)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(str(outside / planted.lstrip(".")), p)


def make_outside(outside) -> None:
    """Files the links point to (some missing on purpose: a link to nothing must not be created
    through), and a directory tree a walk must not enter."""
    (outside / "tree" / "sub").mkdir(parents=True)
    (outside / "tree" / "sub" / "keep").write_bytes(b"keep")
    for name in DB_NAMES[:2]:
        (outside / name).write_bytes(b"outside " + name.encode())
        (outside / safefs.tmp_name(name).lstrip(".")).write_bytes(b"outside tmp")
    (outside / "marker").write_bytes(b"outside marker")
    os.chmod(outside / "marker", 0o640)


def snapshot(top) -> dict:
    """Every entry below `top`: type, mode, owner, and the bytes of files."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, top)] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid, body)
    st = os.lstat(top)
    out["."] = (st.st_mode, st.st_uid, st.st_gid)
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "run/localaid/progress"))
    layout = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    outside = tmp_path / "outside"
    outside.mkdir()
    make_outside(outside)
    host = PlantingHost(layout, outside)
    installed(layout, host, tmp_path)
    return layout, host, outside


def text(tmp_path) -> str:
    import json
    return json.loads((tmp_path / "run/localaid/progress/webui-setup.json").read_text())["text"]


def test_rollback_replaces_planted_links_and_writes_nothing_outside(world):
    layout, host, outside = world
    before = snapshot(outside)
    host.unhealthy.add("0.12.5")
    host.plant_on_start.add("0.12.5")  # the failing version leaves links at every name
    host.plant_in_venv = True
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert snapshot(outside) == before
    data = layout.p(DATA)
    st = os.lstat(db_path(layout))
    assert stat.S_ISREG(st.st_mode) and open(db_path(layout), "rb").read() == ORIGINAL_DB
    assert st.st_mode & 0o777 == 0o600 and (st.st_uid, st.st_gid) == SERVICE_IDS
    for name in DB_NAMES[1:]:
        assert not os.path.lexists(os.path.join(data, name))  # side files (links) removed, not followed
    assert host.serving == "0.12.4" and webui.current_version(layout) == "0.12.4"
    # the venv: its marker is root's regular file (written over the planted link), the directory
    # the service user's (root made it for the build, which ran as that user), the link left as is
    venv = layout.venv("0.12.5")
    assert webui.is_complete(layout, "0.12.5")
    assert os.lstat(venv).st_uid == SERVICE_IDS[0] and os.lstat(venv).st_mode & 0o777 == 0o755
    assert os.path.islink(os.path.join(venv, "lib", "python3.11", "site-packages", "evil-dir"))
    backup = [f for f in os.listdir(layout.backups) if f.endswith(".db")]
    assert len(backup) == 1 and os.stat(os.path.join(layout.backups, backup[0])).st_mode & 0o777 == 0o600
    found = store_backups(layout)  # and the backup of all the data, taken before the stop
    db = os.path.join(found[0].path, "data", "webui.db")
    assert len(found) == 1 and os.stat(db).st_mode & 0o777 == 0o600 and os.stat(db).st_uid == 0
    assert os.stat(found[0].path).st_mode & 0o777 == 0o700


def test_backup_refuses_a_linked_database(world, tmp_path):
    layout, host, outside = world
    before = snapshot(outside)
    plant_db_links(layout.p(DATA), outside)  # before the upgrade: the backup would read outside
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert "symbolic link" in text(tmp_path) and "rolled back to 0.12.4" in text(tmp_path)
    assert snapshot(outside) == before
    assert [f for f in os.listdir(layout.backups)] == []
    assert host.serving == "0.12.4" and host.active


def test_backup_refuses_a_fifo_and_a_planted_hard_link(world, tmp_path):
    layout, host, outside = world
    wal = db_path(layout) + "-wal"
    os.mkfifo(wal)  # reading it would block forever
    signal.alarm(20)
    try:
        assert upgrade(layout, host, config(), "0.12.5") == 1
    finally:
        signal.alarm(0)
    assert "not a regular file" in text(tmp_path) and host.serving == "0.12.4"
    os.unlink(wal)
    if not ROOT:
        return  # a hard link to a file of another user needs another user
    secret = outside / "secret"
    secret.write_bytes(b"root's secret")
    os.link(secret, wal)  # root's file, linked in by the service user
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert "hard link" in text(tmp_path)
    for top in (layout.backups, layout.p("/var/lib/localaid/backups")):
        assert not any(b"root's secret" in open(os.path.join(d, f), "rb").read()
                       for d, _dirs, files in os.walk(top) for f in files)


def test_clearing_a_failed_venv_does_not_follow_links(world):
    layout, host, outside = world
    before = snapshot(outside)
    host.plant_in_venv = True
    host.fail_install.add("0.12.6")
    real = host._run

    def run(argv, on_line):  # the failed install leaves a venv holding links
        rc, tail = real(argv, on_line)
        if "install" in argv and argv[-1] == "open-webui==0.12.6":
            site = os.path.join(layout.venv("0.12.6"), "lib", "python3.11", "site-packages")
            os.makedirs(site, exist_ok=True)
            os.symlink(str(outside / "tree"), os.path.join(site, "evil-dir"))
            os.symlink(str(outside / "tree" / "sub" / "keep"), os.path.join(site, "evil-file"))
        return rc, tail
    host._run = run
    assert upgrade(layout, host, config(), "0.12.6") == 1
    assert not os.path.exists(layout.venv("0.12.6"))
    assert snapshot(outside) == before


def test_a_linked_data_dir_is_refused(world, tmp_path):
    layout, host, outside = world
    data = layout.p(DATA)
    os.rename(data, str(outside / "data"))
    before = snapshot(outside)
    os.symlink(str(outside / "data"), data)
    assert provision(layout, host, config()) == 1
    assert "symbolic link" in text(tmp_path)
    assert snapshot(outside) == before


def test_safefs_write_replaces_a_link_and_never_creates_through_one(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    target = tmp_path / "target"
    os.symlink(str(target), d / "f")
    os.symlink(str(target), d / safefs.tmp_name("f"))
    with safefs.directory(str(d)) as dfd:
        safefs.write(dfd, "f", b"new", 0o600)
        assert safefs.digest(dfd, "f") is not None
    assert not target.exists() and (d / "f").read_bytes() == b"new" and not os.path.islink(d / "f")
    assert sorted(os.listdir(d)) == ["f"]
    with pytest.raises(OSError):
        with safefs.directory(str(d / "f")):
            pass
