"""Backups and restores of Open WebUI's state on a temporary file-system root.

Real files and real SQLite databases (WAL mode, as Open WebUI 0.12 keeps them); the Host
double of test_webui_upgrade.py stands in for systemd and the service's HTTP answers, and runs
the snapshot script (which a real host runs as user open-webui through systemd-run) with this
interpreter. A kill is an exception raised where the job's hook names a step.
(tests/integration/test_real_webui.py does the same with the real Open WebUI.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import threading
import time

import pytest

from localaid import paths
from localaid.config import BackupConfig, Config
from localaid.policy_backup import backup_fragment
from localaid.provision import safefs
from localaid.provision.job import JobError
from localaid.provision.webui import backups, restore, snapshot
from localaid.records import BackupObs
from test_webui_upgrade import DATA, FakeHost, Killed, config, db_path, provision

STORE = "/var/lib/localaid/backups"


class BackupHost(FakeHost):
    """FakeHost (which runs the snapshot script), plus Ollama's list of models."""

    def get(self, url, timeout=2.0):
        if url.endswith("/api/tags"):
            return 200, {"models": [{"name": "qwen3:1.7b"}, {"name": "nomic-embed-text:latest"}]}
        return super().get(url, timeout)


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "run/localaid/progress"))
    layout = webui_layout(tmp_path)
    host = BackupHost(layout)
    assert provision(layout, host, config()) == 0
    fill(layout)
    return layout, host


def webui_layout(tmp_path):
    from localaid.provision import webui
    return webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")


def fill(layout, chats: int = 50) -> None:
    """A data dir as Open WebUI leaves it: webui.db (WAL), the vector store, uploads, a cache."""
    data = layout.p(DATA)
    con = sqlite3.connect(db_path(layout))
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS chat (id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
    con.executemany("INSERT INTO chat (title, body) VALUES (?, ?)", [(f"chat {i}", "x" * 500) for i in range(chats)])
    con.commit()
    con.close()
    os.makedirs(f"{data}/vector_db/abc", exist_ok=True)
    vec = sqlite3.connect(f"{data}/vector_db/chroma.sqlite3")
    vec.execute("CREATE TABLE IF NOT EXISTS embeddings (id TEXT, doc TEXT)")
    vec.execute("INSERT INTO embeddings VALUES ('1', 'the lighthouse keeper counts 417 steps')")
    vec.commit()
    vec.close()
    with open(f"{data}/vector_db/abc/data_level0.bin", "wb") as f:
        f.write(b"\x01" * 4096)
    os.makedirs(f"{data}/uploads", exist_ok=True)
    with open(f"{data}/uploads/notes.txt", "w") as f:
        f.write("four hundred and seventeen steps\n")
    os.makedirs(f"{data}/cache/embedding", exist_ok=True)
    with open(f"{data}/cache/embedding/model.bin", "wb") as f:
        f.write(b"\x00" * 1000)


def ctx(layout, host, hook=None, cfg=None):
    from localaid.provision import webui
    return webui.Ctx(cfg or config(), layout, host, job="backup", hook=hook)


def take(layout, host, reason=backups.SCHEDULED, online=True, hook=None):
    return snapshot.take(ctx(layout, host, hook), reason, online)


def chats(path: str) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM chat").fetchone()[0]
    finally:
        con.close()


# ------------------------------------------------------------------------------------ backup
def test_an_online_backup_holds_the_state_checked_and_hashed(world):
    layout, host = world
    b = take(layout, host)
    assert b is not None and b.good and b.reason == "scheduled" and b.webui_version == "0.12.4", b
    assert set(b.files) == {"data/webui.db", "data/vector_db/chroma.sqlite3", "data/vector_db/abc/data_level0.bin",
                            "data/uploads/notes.txt", "secret-key"}  # cache/ left out, no -wal/-shm
    assert b.manifest["integrity"] == {"webui.db": "ok", "vector_db/chroma.sqlite3": "ok"}
    assert b.manifest["models"] == ["nomic-embed-text:latest", "qwen3:1.7b"]
    assert backups.verify(b) == []
    assert chats(os.path.join(b.path, "data", "webui.db")) == 50
    # SQLite ran as the service user (the double runs it here); root copied its result in
    assert [c[0] for c in host.calls].count("snapshot") == 1
    assert host.units[-1]["unit"] == "localaid-webui-build-backup.service"
    assert any(p.startswith("ReadWritePaths=") and p.endswith("/.staging") for p in host.units[-1]["props"])
    # root's, private; the store may be traversed to .staging only
    store = layout.p(STORE)
    assert os.stat(store).st_mode & 0o777 == 0o711 and os.stat(b.path).st_mode & 0o777 == 0o700
    assert all(os.stat(os.path.join(b.path, f)).st_mode & 0o777 == 0o600 for f in b.files)
    assert sorted(os.listdir(store)) == [b.name]  # no staging or partial directory left
    with open(os.path.join(b.path, "secret-key")) as f:
        assert f.read() == open(layout.secret).read()


def test_a_backup_during_a_burst_of_writes_is_one_consistent_moment(world):
    layout, host = world
    stop = threading.Event()
    written = []

    def writer():
        con = sqlite3.connect(db_path(layout), timeout=5)
        while not stop.is_set():
            with con:
                con.execute("INSERT INTO chat (title, body) VALUES ('burst', ?)", ("y" * 2000,))
            written.append(1)
        con.close()
    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.2)
        b = take(layout, host)
    finally:
        stop.set()
        t.join()
    copy = os.path.join(b.path, "data", "webui.db")
    assert b.good and 50 < chats(copy) <= 50 + len(written), (chats(copy), len(written))
    assert snapshot.integrity(copy) == "ok"
    assert chats(db_path(layout)) == 50 + len(written)  # the writer was never refused


@pytest.mark.parametrize("step", ["files", "databases", "check", "manifest", "rename"])
def test_a_backup_killed_at_each_step_leaves_only_complete_backups(world, step):
    layout, host = world
    first = take(layout, host)

    def hook(s):
        if s == step:
            raise Killed(s)
    with pytest.raises(Killed):
        take(layout, host, hook=hook)
    assert [b.name for b in backups.listing(layout.p(STORE))] == [first.name]
    assert any(n.startswith(backups.PARTIAL) for n in os.listdir(layout.p(STORE)))
    assert backups.find(layout.p(STORE), None).name == first.name
    # the next backup removes what the kill left
    second = take(layout, host)
    assert sorted(os.listdir(layout.p(STORE))) == [first.name, second.name]


def test_a_full_target_disk_fails_clearly_and_keeps_the_earlier_backups(world):
    layout, host = world
    first = take(layout, host)
    host.free = 10 << 20
    with pytest.raises(JobError) as e:
        take(layout, host)
    assert "not enough space in" in str(e.value) and "earlier backups are intact" in str(e.value)
    assert os.listdir(layout.p(STORE)) == [first.name] and backups.verify(first) == []


def test_a_write_error_half_way_leaves_nothing(world, monkeypatch):
    layout, host = world
    real = safefs.write

    def write(dfd, name, source, mode, uid=-1, gid=-1):
        if name == "notes.txt":
            raise OSError(28, "No space left on device")
        return real(dfd, name, source, mode, uid, gid)
    monkeypatch.setattr(safefs, "write", write)
    with pytest.raises(JobError) as e:
        take(layout, host)
    assert "cannot back up uploads/notes.txt" in str(e.value) and "No space left" in str(e.value)
    assert os.listdir(layout.p(STORE)) == []


def test_links_planted_in_the_data_dir_are_never_followed(world, tmp_path):
    layout, host = world
    secret = tmp_path / "root-only"
    secret.write_text("root's secret\n")
    data = layout.p(DATA)
    os.symlink(str(secret), f"{data}/uploads/evil.txt")
    os.symlink(str(tmp_path), f"{data}/uploads/evil-dir")
    os.mkfifo(f"{data}/uploads/pipe")
    b = take(layout, host)
    assert b.good and sorted(b.manifest["skipped"]) == ["uploads/evil-dir", "uploads/evil.txt", "uploads/pipe"]
    for top, _dirs, files in os.walk(b.path):
        for f in files:
            assert b"root's secret" not in open(os.path.join(top, f), "rb").read()


def test_a_corrupt_database_makes_a_backup_with_problems(world):
    layout, host = world
    with open(db_path(layout), "r+b") as f:  # garbage over the pages after the header page
        f.seek(4096)
        f.write(os.urandom(8192))
    b = take(layout, host)
    assert not b.good and any(p.startswith("webui.db") for p in b.problems), b.problems
    assert backups.latest(layout.p(STORE)) is None  # never offered as "latest"


# ---------------------------------------------------------------------------------- retention
def fake(name: str, good: bool = True) -> backups.Backup:
    m = backups.NAME.fullmatch(name)
    return backups.Backup(name, "/x/" + name, backups._taken_at(name), m.group(2), "0.12.4", "0.3.0", 1,
                          () if good else ("webui.db: integrity_check: bad",), {})


def test_retention_by_count_age_and_reason_keeps_the_newest_good_one():
    day = 86400
    now = backups._taken_at("20261210T000000Z-scheduled")
    olds = [fake(f"202612{d:02d}T000000Z-scheduled") for d in range(1, 10)]
    safety = [fake(f"202612{d:02d}T120000Z-before-upgrade") for d in (2, 4, 6)]
    gone = backups.to_remove(olds + safety, keep=3, max_age=30 * day, keep_safety=2, now=now)
    assert [b.name for b in gone] == sorted([b.name for b in olds[:6]] + [safety[0].name])
    gone = backups.to_remove(olds, keep=7, max_age=2.5 * day, keep_safety=2, now=now)
    assert [b.name for b in gone] == [b.name for b in olds[:7]]  # 9 and 8 Dec are within 2.5 days
    # everything old, the newest good one stays; a newer damaged one does not count as good
    gone = backups.to_remove(olds[:3] + [fake("20261205T000000Z-scheduled", good=False)], keep=1,
                             max_age=day, keep_safety=1, now=now)
    assert olds[2].name not in [b.name for b in gone] and len(gone) == 3


def test_prune_removes_what_retention_picks(world):
    layout, host = world
    cfg = dataclasses.replace(config(), backup=dataclasses.replace(BackupConfig(), keep=2))
    made = [take(layout, host) for _ in range(3)]
    assert len({b.name for b in made}) == 3  # the same second: -2, -3
    backups.prune(layout.p(STORE), cfg, time.time(), lambda *a, **k: None)
    assert [b.name for b in backups.listing(layout.p(STORE))] == [b.name for b in made[1:]]


# ------------------------------------------------------------------------------------ restore
def restore_ctx(layout, host, hook=None):
    from localaid.provision import webui
    return webui.Ctx(config(), layout, host, job="restore", hook=hook)


def destroy(layout):
    safefs.remove_tree(layout.p(DATA))


def test_restore_after_the_data_dir_is_gone(world):
    layout, host = world
    b = take(layout, host)
    key = open(layout.secret).read()
    destroy(layout)
    with open(layout.secret, "w") as f:
        f.write("a new key made after the disaster")
    assert restore.start(restore_ctx(layout, host), b) == 0
    assert chats(db_path(layout)) == 50 and open(layout.secret).read() == key
    assert open(layout.p(DATA) + "/uploads/notes.txt").read() == "four hundred and seventeen steps\n"
    st = os.stat(db_path(layout))
    assert (st.st_uid, st.st_mode & 0o777) == (host.ids("open-webui")[0], 0o600)
    assert key.strip() in open(layout.env_file).read()  # the service starts with the restored key
    assert host.active and host.serving == "0.12.4"
    kept = [x for x in backups.listing(layout.p(STORE)) if x.reason == "before-restore"]
    assert len(kept) == 1 and "data/webui.db" not in kept[0].files  # what was there: nothing
    assert not os.path.exists(restore.journal(restore_ctx(layout, host)).path)


@pytest.mark.parametrize("step", ["stop", "keep", "restore", "version", "start"])
def test_a_restore_killed_at_each_step_completes_on_the_next_run(world, step):
    layout, host = world
    b = take(layout, host)
    with open(db_path(layout), "wb") as f:
        f.write(b"garbage")

    def hook(s):
        if s == step:
            raise Killed(s)
    with pytest.raises(Killed):
        restore.start(restore_ctx(layout, host, hook), b)
    assert restore.run(restore_ctx(layout, host)) == 0
    assert chats(db_path(layout)) == 50 and host.active
    assert restore.run(restore_ctx(layout, host)) is None  # nothing left to resume
    # the set-up job, too, finishes one (here: nothing left)
    assert provision(layout, host, config()) == 0 and chats(db_path(layout)) == 50


def test_a_restore_that_does_not_come_up_puts_back_what_was_there(world):
    layout, host = world
    b = take(layout, host)
    fill(layout, chats=7)  # what is there now: 57 chats
    real_start = host.start

    def start(unit):
        real_start(unit)
        if chats(db_path(layout)) == 50:  # the restored state does not start
            host.unhealthy.add(host.serving)
        else:
            host.unhealthy.discard(host.serving)
    host.start = start
    assert restore.start(restore_ctx(layout, host), b) == 1
    assert chats(db_path(layout)) == 57 and host.active
    assert not os.path.exists(restore.journal(restore_ctx(layout, host)).path)


def test_a_damaged_backup_is_refused_before_anything_stops(world):
    layout, host = world
    b = take(layout, host)
    with open(os.path.join(b.path, "data", "uploads", "notes.txt"), "a") as f:
        f.write("changed\n")
    host.calls.clear()
    with pytest.raises(JobError) as e:
        restore.start(restore_ctx(layout, host), b)
    assert "is damaged" in str(e.value) and "notes.txt" in str(e.value)
    assert not [c for c in host.calls if c[0] == "stop"] and chats(db_path(layout)) == 50


def test_a_backup_from_a_newer_open_webui_installs_that_version(world):
    layout, host = world
    from localaid.provision import webui
    host.migration = {}  # the double's migration writes bytes that are no SQLite
    args = type("Args", (), {"target_version": "0.12.5"})()
    assert webui.upgrade_main(args, config(), webui.Ctx(config(), layout, host)) == 0
    b = take(layout, host)
    assert b.webui_version == "0.12.5"
    webui.switch_current(layout, "0.12.4")  # as if installed anew with the older version
    assert restore.start(restore_ctx(layout, host), b) == 0
    assert webui.current_version(layout) == "0.12.5" and host.serving == "0.12.5"


# ---------------------------------------------------------------------------------- STATUS
def test_status_shows_the_age_and_warns_when_stale_or_failed():
    cfg = Config()
    now = 1_800_000_000.0
    assert backup_fragment(cfg, None) is None
    assert backup_fragment(cfg, BackupObs(wall=now, since=now - 3600)) is None  # the first one is due
    assert backup_fragment(cfg, BackupObs(wall=now, since=now - 3 * 86400)).startswith("no backup yet (schedule daily)")
    ok = BackupObs(wall=now, good_at=now - 5 * 3600, last_at=now - 5 * 3600)
    assert backup_fragment(cfg, ok) == "backup 5 h ago"
    stale = dataclasses.replace(ok, good_at=now - 3 * 86400, last_at=now - 3 * 86400)
    assert backup_fragment(cfg, stale).startswith("last good backup 3.0 d ago (schedule daily)")
    failed = dataclasses.replace(ok, last_at=now - 60, last_error="not enough space in /mnt/b")
    assert backup_fragment(cfg, failed) == "backup failed < 1 h ago: not enough space in /mnt/b"


def test_the_outcome_reaches_status_and_metrics(world, tmp_path):
    from localaid import observe, report
    from localaid.records import Decision, History, Observation
    path = str(tmp_path / "backup-status.json")
    backups.record({"at": 1000.0, "ok": True, "name": "x", "size": 123}, path)
    backups.record({"at": 2000.0, "ok": False, "error": "disk full"}, path)
    obs = observe.backup_obs(path)
    assert (obs.good_at, obs.good_size, obs.last_at, obs.last_error) == (1000.0, 123, 2000.0, "disk full")
    text = report.metrics_text(Observation(now=0, backup=obs), Decision((), History(), "", True), {}, 0.01, Config())
    assert "localaid_backup_last_success_timestamp_seconds 1000" in text
    assert "localaid_backup_last_failed 1" in text and "localaid_backup_interval_seconds 86400" in text
    assert json.loads(open(path).read())["last_good"]["name"] == "x"


def test_a_restore_never_follows_links_planted_in_the_data_dir(world, tmp_path):
    layout, host = world
    b = take(layout, host)
    outside = tmp_path / "etc-like"
    outside.mkdir()
    (outside / "shadow").write_text("root:x:0\n")
    data = layout.p(DATA)
    os.unlink(db_path(layout))
    os.symlink(str(outside / "shadow"), db_path(layout))  # root writing webui.db would write here
    safefs.remove_tree(f"{data}/uploads")
    os.symlink(str(outside), f"{data}/uploads")  # and here
    before = sorted((p.name, p.read_bytes()) for p in outside.iterdir())
    assert restore.start(restore_ctx(layout, host), b) == 0
    assert sorted((p.name, p.read_bytes()) for p in outside.iterdir()) == before
    assert not os.path.islink(db_path(layout)) and chats(db_path(layout)) == 50
    assert not os.path.islink(f"{data}/uploads") and os.listdir(f"{data}/uploads") == ["notes.txt"]
    kept = [x for x in backups.listing(layout.p(STORE)) if x.reason == "before-restore"][0]
    assert "data/webui.db" not in kept.files and sorted(kept.manifest["skipped"]) == ["uploads", "webui.db"]
