"""`localaid restore BACKUP`: put a backup of Open WebUI's state back, as a journaled job.

    stop → keep → restore → version → start

keep     the state being replaced becomes a backup itself ("before-restore", copied as it is,
         a corrupt database included), so a restore can be undone with another restore
restore  the data dir emptied (but its cache/) and refilled from the backup, files checked
         against the manifest first; the secret key put back; the environment file rewritten
version  a backup taken with a newer Open WebUI than the one installed gets that version
         (built like an upgrade); an older one is migrated forward by Open WebUI when it starts
start    started and waited for like an upgrade; not healthy → rollback: the kept state and
         the version that ran before, started again

Each step is recorded in restore.json (job.Journal) before it runs and can be redone: a restore
killed anywhere is completed by its next run (`localaid restore` again, or the set-up job that
localaid.service starts). Root writes into the data dir only through safefs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time

from localaid.provision import safefs
from localaid.provision.job import JobError, Journal, Maintenance, Step, drive, resume
import localaid.provision.webui.backups as backups
import localaid.provision.webui.snapshot as snapshot
from localaid.provision.webui.layout import SERVICE_USER, UNIT, current_version, is_complete, switch_current
from localaid.provision.webui.service import configure, enable, start_timeout, wait_healthy
from localaid.provision.webui.upgrade import record_installed
from localaid.provision.webui.venv import build_venv


def journal(ctx) -> Journal:
    return Journal(os.path.join(ctx.layout.base, "restore.json"))


def _store(ctx) -> str:
    return ctx.layout.p(ctx.config.backup.dir)


def version_key(version: str | None) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version or ""))


# ------------------------------------------------------------------------------- put back
def _clear(dfd: int) -> None:
    """Everything in the data dir but its cache/ removed (links unlinked, never followed)."""
    for name in os.listdir(dfd):
        if name in snapshot.LEFT_OUT:
            continue
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)


def put_back(ctx, b: backups.Backup) -> int:
    """The data dir and the secret key as `b` holds them; the number of files written."""
    uid, gid = ctx.host.ids(SERVICE_USER)
    data = ctx.data_dir()
    safefs.ensure_dir(data, 0o700, uid, gid)
    n = 0
    with safefs.directory(data) as dfd:
        _clear(dfd)
        for rel in sorted(b.files):
            if not rel.startswith("data/"):
                continue
            inner = rel[len("data/"):]
            src = os.open(os.path.join(b.path, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                dir_fd = safefs.open_dirs(dfd, os.path.dirname(inner), 0o700, uid, gid)
                try:
                    safefs.write(dir_fd, os.path.basename(inner), src, 0o600, uid, gid)
                finally:
                    os.close(dir_fd)
            finally:
                os.close(src)
            n += 1
    if "secret-key" in b.files:
        with open(os.path.join(b.path, "secret-key"), "rb") as f, \
                safefs.directory(os.path.dirname(ctx.layout.secret)) as sfd:
            safefs.write(sfd, os.path.basename(ctx.layout.secret), f.read(), 0o600, uid, gid)
    return n


# ---------------------------------------------------------------------------------- steps
def steps(ctx) -> list[Step]:
    host, rep = ctx.host, ctx.rep

    def stop(j):
        Maintenance("open-webui", ctx.layout.maintenance_dir).on()
        rep.step(f"restoring {j['backup']}: stopping Open WebUI", 0.1)
        t = time.time()
        host.stop(UNIT)
        return {"stopped_at": j.get("stopped_at") or t}

    def keep(j):
        host.stop(UNIT)
        rep.step("keeping the current state as a backup first", 0.2)
        kept = snapshot.take(ctx, "before-restore", online=False)
        rep.say("current state kept", backup=kept.path, problems="; ".join(kept.problems) or None)
        return {"kept": kept.name}

    def restore(j):
        host.stop(UNIT)
        b = _backup(ctx, j["backup"])
        rep.step(f"restoring {b.name} ({len(b.files)} files)", 0.5)
        n = put_back(ctx, b)
        configure(ctx)  # the environment file carries the restored secret key
        return {"files": n}

    def version(j):
        b, cur = _backup(ctx, j["backup"]), j.get("from_version")
        want = b.webui_version
        if want and cur and version_key(want) > version_key(cur):
            rep.step(f"the backup was taken with Open WebUI {want}; installing it (running {cur})", 0.6)
            build_venv(ctx, want)
            switch_current(ctx.layout, want)
            record_installed(ctx, want, ctx.config.webui.version)
        elif want and cur and want != cur:
            rep.say(f"the backup was taken with Open WebUI {want}; {cur} migrates it forward when it starts")

    def start(j):
        ver = current_version(ctx.layout)
        rep.step(f"starting Open WebUI {ver}", 0.8)
        enable(ctx)
        host.start(UNIT)
        why = wait_healthy(ctx, ver, start_timeout(ctx.config))
        if why is not None:
            raise JobError(why)

    return [Step("stop", stop), Step("keep", keep), Step("restore", restore), Step("version", version),
            Step("start", start)]


def _backup(ctx, name: str) -> backups.Backup:
    b = backups.read(_store(ctx), name)
    if b is None:
        raise JobError(f"backup {name} is gone from {_store(ctx)}")
    return b


def rollback(ctx, j: dict) -> None:
    """What ran before: the kept state (when the restore got that far), its version, started."""
    host = ctx.host
    ctx.rep.warn(f"restoring {j['backup']} failed ({j.get('reason', 'interrupted')}): putting back what was there")
    host.stop(UNIT)
    if j.get("kept"):
        put_back(ctx, _backup(ctx, j["kept"]))
        configure(ctx)
    frm = j.get("from_version")
    if frm and is_complete(ctx.layout, frm) and current_version(ctx.layout) != frm:
        switch_current(ctx.layout, frm)
        record_installed(ctx, frm, ctx.config.webui.version)
    if frm:
        host.start(UNIT)
        why = wait_healthy(ctx, frm, start_timeout(ctx.config))
        if why:
            raise JobError(f"the state before the restore does not come up either: {why}")


# ------------------------------------------------------------------------------------ runs
def run(ctx, j: dict | None = None) -> int | None:
    """Drive the new restore `j`, or (None) finish one a kill left. None: nothing to resume."""
    jr = journal(ctx)
    maint = Maintenance("open-webui", ctx.layout.maintenance_dir)
    undo = lambda rec: rollback(ctx, rec)  # noqa: E731
    try:
        if j is None:
            if jr.read() is None:
                return None
            ctx.rep.say("resuming an interrupted restore", step=jr.read()["step"], backup=jr.read().get("backup"))
            maint.on()
            outcome, j = resume(jr, steps(ctx), undo, ctx.hook)
            if outcome == "rolled back":
                ctx.rep.failed(f"the interrupted restore of {j['backup']} was rolled back")
                return 1
        else:
            jr.write(j)
            j = drive(jr, j, steps(ctx), undo, ctx.hook)
    except JobError as e:
        ctx.rep.failed(f"restore of {j['backup']}: {e}", e.tail)
        return 1
    finally:
        if jr.read() is None:
            maint.off()
    backups.prune(_store(ctx), ctx.config, time.time(), ctx.rep.say)  # webui.keep_backups counts what restores keep
    down = time.time() - j["stopped_at"] if j.get("stopped_at") else None
    ctx.rep.done(f"restored {j['backup']}; Open WebUI {current_version(ctx.layout)} serving on "
                 f"{ctx.config.webui.public_url}", outage=f"{down:.1f}s" if down is not None else None,
                 kept=j.get("kept"))
    return 0


def start(ctx, b: backups.Backup, force: bool = False) -> int:
    """Check `b`, then restore it."""
    if not b.good and not force:
        raise JobError(f"backup {b.name} has problems ({'; '.join(b.problems)}): --force restores it anyway")
    ctx.rep.step(f"checking {b.name} against its manifest", 0.02)
    bad = backups.verify(b)
    if bad:
        raise JobError(f"backup {b.name} is damaged: {'; '.join(bad[:3])}" + (" …" if len(bad) > 3 else ""))
    if current_version(ctx.layout) is None:
        raise JobError("Open WebUI is not installed yet: a restore needs it (localaid installs it when "
                       "webui.enabled is true; then restore)")
    j = {"backup": b.name, "from_version": current_version(ctx.layout), "step": "stop", "pid": os.getpid(),
         "started": time.time()}
    return run(ctx, j)
