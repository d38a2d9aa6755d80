"""Install or upgrade Open WebUI as a journaled job: build → snapshot → stop → backup → switch → start.

Each step is recorded in upgrade.json (job.Journal) before it is taken and can be redone, so a
kill anywhere is finished by the next run (job.resume): forwards to a healthy new version, or
back to the old venv with webui.db restored byte for byte. The build changes nothing users rely
on (undo=False: a failed build ends the job, the old version serving); from the stop on, a
failure rolls back. The snapshot is a regular backup of all the data (snapshot.py), taken online
before the stop; the backup during the outage is the exact copy of webui.db the rollback puts back
(backups/ beside the venvs, as webui.keep_backups counts them).

webui.db lives in the service user's data dir: root reads and writes it only through safefs
(a descriptor of the directory, no link followed, fixed modes, O_EXCL temporary names).
"""

from __future__ import annotations

import hashlib
import os
import time

from localaid import fsutil
from localaid.provision import safefs
from localaid.provision.job import ROLLBACK, JobError, Maintenance, Step, drive, resume
import localaid.provision.webui.backups as backups
import localaid.provision.webui.snapshot as snapshot
from localaid.provision.webui.layout import (
    COMPLETE_MARKER, SERVICE_USER, UNIT, current_version, is_complete, journal, switch_current)
from localaid.provision.webui.service import enable, settle_admin, settle_stored, start_timeout, wait_healthy
from localaid.provision.webui.venv import build_venv, phase_text
from localaid.quantity import format_size

DB = "webui.db"
DB_SIDE_FILES = ("-wal", "-shm", "-journal")


def _maintenance(ctx) -> Maintenance:
    return Maintenance("open-webui", ctx.layout.maintenance_dir)


# ---------------------------------------------------------------------------------- database
def backup_db(ctx, version_from: str | None) -> dict:
    """Copy webui.db (and a WAL left by a crash) into backups/ (0600); {} without a database.
    A failure (a full disk) is a JobError saying where and why; nothing half-written stays."""
    uid, _ = ctx.host.ids(SERVICE_USER)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"webui-{version_from or 'none'}-{stamp}.db"
    out: dict = {}
    with safefs.directory(ctx.data_dir()) as dfd, safefs.directory(ctx.layout.backups) as bfd:
        for suffix in ("", "-wal"):
            try:
                fd = safefs.open_file(dfd, DB + suffix, owner=uid)
            except FileNotFoundError:
                if not suffix:
                    return {}
                continue
            except safefs.UnsafeFile as e:
                raise JobError(f"{os.path.join(ctx.config.webui.data_dir, DB + suffix)} {e.strerror}: "
                               f"not backed up") from None
            try:
                size = os.fstat(fd).st_size
                if suffix and size == 0:
                    continue
                safefs.write(bfd, name + suffix, fd, 0o600)
            except OSError as e:
                for f in (name, name + "-wal"):
                    safefs.unlink(bfd, f)
                free = ctx.host.free_bytes(ctx.layout.backups)
                raise JobError(f"cannot back up {DB + suffix} ({format_size(size)}) to {ctx.layout.backups}: "
                               f"{e.strerror or e} ({format_size(free)} free there)") from None
            finally:
                os.close(fd)
            path, sha = os.path.join(ctx.layout.backups, name + suffix), safefs.digest(bfd, name + suffix)
            out.update({"backup": path, "db_sha256": sha, "wal": None} if not suffix
                       else {"wal": path, "wal_sha256": sha})
    return out


def restore_db(ctx, j: dict) -> None:
    """Put the backup of `j` back as webui.db (the service user's, 0600), side files cleared.
    A backup is copied only when its bytes are the ones recorded when it was taken."""
    if not j.get("backup"):
        return
    uid, gid = ctx.host.ids(SERVICE_USER)
    db = os.path.join(ctx.data_dir(), DB)
    with safefs.directory(ctx.data_dir()) as dfd:
        if safefs.digest(dfd, DB, owner=uid) != j["db_sha256"]:
            _copy_back(j["backup"], j["db_sha256"], dfd, DB, uid, gid)
        for suffix in DB_SIDE_FILES:
            safefs.unlink(dfd, DB + suffix)
        if j.get("wal"):
            _copy_back(j["wal"], j.get("wal_sha256"), dfd, DB + "-wal", uid, gid)
        got = safefs.digest(dfd, DB, owner=uid) or "missing"
    if got != j["db_sha256"]:
        raise JobError(f"restored {db} does not match its backup ({got[:12]} != {j['db_sha256'][:12]})")


def _copy_back(backup: str, sha256: str | None, dfd: int, name: str, uid: int, gid: int) -> None:
    with safefs.directory(os.path.dirname(backup)) as bfd:
        fd = safefs.open_file(bfd, os.path.basename(backup), owner=0)
        try:
            if sha256 is not None:
                h = hashlib.sha256()
                with os.fdopen(os.dup(fd), "rb") as f:
                    for chunk in iter(lambda: f.read(safefs.CHUNK), b""):
                        h.update(chunk)
                if h.hexdigest() != sha256:
                    raise JobError(f"backup {backup} is not the file taken before the upgrade "
                                   f"({h.hexdigest()[:12]} != {sha256[:12]}): not restored")
                os.lseek(fd, 0, os.SEEK_SET)
            safefs.write(dfd, name, fd, 0o600, uid, gid)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------ steps
def steps(ctx) -> list[Step]:
    """The upgrade, step by step; each one may be redone after a kill."""
    host = ctx.host

    def build(j):
        build_venv(ctx, j["to"])
        _maintenance(ctx).on()  # from here on the supervisor keeps its hands off

    def snapshot_data(j):
        """A regular backup of all of Open WebUI's data (backup.dir, "before-upgrade"), taken
        while the old version still serves: it costs no outage, and a failure (no room) ends the
        job before anything stopped."""
        if not j.get("from"):
            return None
        ctx.rep.step(f"{_label(j)}: backing up Open WebUI's data (it keeps serving)", 0.55)
        b = snapshot.take(ctx, "before-upgrade", online=True)
        ctx.rep.say("Open WebUI's data backed up", backup=b.path, problems="; ".join(b.problems) or None)
        return {"snapshot": b.name}

    def stop(j):
        _maintenance(ctx).on()
        ctx.rep.step(f"{_label(j)}: stopping the old version", 0.6)
        t = time.time()
        host.stop(UNIT)
        return {"stopped_at": j.get("stopped_at") or t}

    def backup(j):
        ctx.rep.step(f"{_label(j)}: backing up webui.db", 0.65)
        return backup_db(ctx, j.get("from"))

    def switch(j):
        switch_current(ctx.layout, j["to"])

    def start(j):
        ctx.rep.step(f"{_label(j)}: starting", 0.8)
        t = host.monotonic()
        enable(ctx)
        host.start(UNIT)
        ctx.timings["start_job"] = round(host.monotonic() - t, 2)
        why = wait_healthy(ctx, j["to"], start_timeout(ctx.config))
        if why is not None:
            raise JobError(why)
        record_installed(ctx, j["to"], j.get("config_version", ctx.config.webui.version))

    return [Step("build", build, undo=False), Step("snapshot", snapshot_data, undo=False),
            Step("stop", stop), Step("backup", backup),
            Step("switch", switch), Step("start", start)]


def rollback(ctx, j: dict) -> None:
    """The old venv serving again with the database as it was before the stop."""
    host, to, frm = ctx.host, j["to"], j.get("from")
    why = j.get("reason", "interrupted")
    ctx.rolled_back = ""  # under way: a failure from here on is the rollback's
    _maintenance(ctx).on()
    ctx.rep.warn(f"Open WebUI {to} failed ({why}): rolling back to {frm or 'nothing'}", version=to, previous=frm)
    host.stop(UNIT)
    restore_db(ctx, j)
    if frm and is_complete(ctx.layout, frm):
        switch_current(ctx.layout, frm)
        host.start(UNIT)
        back = wait_healthy(ctx, frm, start_timeout(ctx.config))
    else:
        switch_current(ctx.layout, None)
        back = "no previous version to return to"
    what = f"rolled back to {frm}" if back is None else f"rollback: {back}"
    failed = "failed to start" if j.get("failed_step", "start") == "start" else f"failed at {j['failed_step']}"
    db = "database restored" if j.get("backup") else \
        "database untouched" if j.get("failed_step") in ("stop", "backup") else "no database to restore"
    ctx.rolled_back = f"Open WebUI {to} {failed} ({why}); {what}, {db}"


def _label(j: dict) -> str:
    return f"Open WebUI {j.get('from')} → {j['to']}" if j.get("from") else f"Open WebUI {j['to']}"


def record_installed(ctx, version: str, config_version: str) -> None:
    fsutil.write_json(ctx.layout.installed, {"version": version, "config_version": config_version,
                                             "at": time.time()})


# ------------------------------------------------------------------------------------- runs
def run(ctx, j: dict | None = None) -> int | None:
    """Drive the new job `j` to its end, or (None) finish what a killed run left: the new version
    healthy (0), or the old one back (1). None when there was nothing to resume."""
    jr, maint = journal(ctx.layout), _maintenance(ctx)
    the_steps = steps(ctx)
    undo = lambda rec: rollback(ctx, rec)  # noqa: E731
    ctx.rolled_back = None
    resuming = j is None
    if resuming:
        j = jr.read()
        if j is None:
            return None
        if j["step"] not in {s.name for s in the_steps} | {ROLLBACK} or not j.get("to"):
            ctx.rep.warn("ignoring an upgrade journal this version cannot read", step=j["step"], file=jr.path)
            jr.clear()
            return None
        ctx.rep.say("resuming an interrupted Open WebUI upgrade", step=j["step"], to=j.get("to"),
                    previous=j.get("from"))
    try:
        if resuming:
            if j["step"] != "build":
                maint.on()  # the killed run's marker names a dead PID: take it over
            outcome, j = resume(jr, the_steps, undo, ctx.hook)
            if outcome == "rolled back":
                return _failed(ctx, ctx.rolled_back or f"{_label(j)}: rolled back")
        else:
            jr.write(j)
            j = drive(jr, j, the_steps, undo, ctx.hook)
    except JobError as e:
        if ctx.rolled_back:
            return _failed(ctx, ctx.rolled_back, e.tail)
        kept = f"; {j['from']} keeps serving" if ctx.rolled_back is None and j.get("from") else ""
        return _failed(ctx, f"{_label(j)}: {e}{kept}", e.tail, e.blocked)
    finally:
        if jr.read() is None:
            maint.off()
    prune(ctx)
    settle_admin(ctx, j["to"])
    settle_stored(ctx)
    frm = j.get("from")
    downtime = time.time() - j["stopped_at"] if j.get("stopped_at") and frm else None
    ctx.rep.say("Open WebUI upgraded" if frm else "Open WebUI installed", version=j["to"], previous=frm,
                downtime=f"{downtime:.1f}s" if downtime is not None else None, phases=phase_text(ctx.timings))
    ctx.rep.done(f"Open WebUI {j['to']} serving on {ctx.config.webui.public_url}")
    return 0


def _failed(ctx, text: str, tail=(), blocked: str | None = None) -> int:
    ctx.rep.failed(text, tail, blocked)
    return 1


def install(ctx, version: str, config_version: str, restart: bool = False) -> int:
    """Make `version` the serving one: nothing when it already is, else the journaled job."""
    layout, host = ctx.layout, ctx.host
    cur = current_version(layout)
    if cur == version and is_complete(layout, version):
        enable(ctx)
        st = host.unit_state(UNIT)
        running = st.active_state in ("active", "activating", "reloading")
        if restart and running:
            ctx.rep.say("open-webui configuration changed: restarting it")
            host.restart(UNIT)
        elif not running and not st.job:
            host.start(UNIT)
        if restart or not running or st.job:
            why = wait_healthy(ctx, version, start_timeout(ctx.config))
            if why:
                return _failed(ctx, why)
        settle_admin(ctx, version)
        settle_stored(ctx)
        ctx.rep.done(f"Open WebUI {version} serving on {ctx.config.webui.public_url}")
        return 0
    j = {"to": version, "from": cur if cur and is_complete(layout, cur) else None, "step": "build",
         "config_version": config_version, "pid": os.getpid(), "started": time.time()}
    return run(ctx, j)


def disable(ctx) -> int:
    layout, host = ctx.layout, ctx.host
    if os.path.exists(layout.enabled_marker):
        ctx.rep.say("webui.enabled is false: stopping and disabling open-webui.service")
        host.stop(UNIT)
        host.disable(UNIT)
        os.unlink(layout.enabled_marker)
    ctx.rep.done("Open WebUI disabled in the configuration")
    return 0


# ------------------------------------------------------------------------------------ prune
def prune(ctx) -> None:
    """Backups by their retention keys (backups.prune), webui.keep_venvs complete venvs (current first, then
    the newest); leftovers of failed builds go."""
    layout, w = ctx.layout, ctx.config.webui
    copies = sorted(f for f in os.listdir(layout.backups) if f.endswith(".db")) \
        if os.path.isdir(layout.backups) else []  # the rollback's exact copies of webui.db
    if os.path.isdir(ctx.layout.p(ctx.config.backup.dir)):
        backups.prune(ctx.layout.p(ctx.config.backup.dir), ctx.config, time.time(), ctx.rep.say)
    for name in copies[:-w.keep_backups] if len(copies) > w.keep_backups else []:
        for f in (name, name + "-wal"):
            try:
                os.unlink(os.path.join(layout.backups, f))
            except FileNotFoundError:
                pass
    cur = current_version(layout)
    versions = layout.versions()  # not the caches beside them
    complete = [v for v in versions if is_complete(layout, v)]
    for v in versions:  # leftovers of failed builds
        if v not in complete and v != cur:
            safefs.remove_tree(layout.venv(v))
    keep = {cur} if cur else set()
    by_age = sorted(complete, key=lambda v: os.lstat(os.path.join(layout.venv(v), COMPLETE_MARKER)).st_mtime,
                    reverse=True)
    for v in by_age:
        if len(keep) >= w.keep_venvs:
            break
        keep.add(v)
    for v in complete:
        if v not in keep:
            ctx.rep.say("removing old Open WebUI venv", version=v)
            safefs.remove_tree(layout.venv(v))
