"""Open WebUI: a pip/uv-built venv per version, a hardened unit, atomic upgrades with rollback.

Runs as root in short-lived units (localaid-webui-setup.service → ``localaid provision webui``)
or from the command line (``localaid upgrade webui [--version V]``), on the provisioning
skeleton (localaid.provision.job, .host). The pieces:

    layout     paths, versions, the state of one run (Ctx)
    installer  interpreter check, ensurepip's wheels, installer output, the Host seam
    sandbox    the transient unit each installer step runs in, as the service user
    indexes    the machine's pip configuration and webui.* keys as the installers' environment
    venv       building venvs/<version> (as the service user) and the disk space it needs
    service    user, data dir, secrets, environment file, drop-ins, health, the admin
    upgrade    the journaled build → stop → backup → switch → start, rollback, pruning
    backups    the backup store: format, listing, retention, the last outcome (for STATUS)
    snapshot   taking a backup (online through SQLite's backup API, or with the service stopped)
    restore    the journaled stop → keep → restore → version → start, rollback
    schedule   localaid-backup.timer from the backup keys
    doctor     `localaid doctor`'s checks
"""

from __future__ import annotations

import os
import sys
import time

from localaid import progress
from localaid.provision.https import service as https
from localaid.provision.job import JobError, Lock, Reporter
from localaid.quantity import format_size
from localaid.provision.webui.doctor import doctor_checks
from localaid.provision.webui.indexes import build_env, pip_config, pip_env, pip_flags, uv_args
from localaid.provision.webui.installer import Seed, WebUIHost, installer_progress, python_problem
from localaid.provision.webui.layout import (
    COMPLETE_MARKER, ENV_FILE, JOB, SERVICE_USER, UNIT, UNIT_DATA_DIR, Ctx, Layout, current_version,
    is_complete, journal, switch_current, venv_version, wanted_version)
from localaid.provision.webui.service import configure, render_dropin, render_env, render_setup_dropin
from localaid.provision.webui.upgrade import disable, install, prune, run
from localaid.provision.webui import backups, restore, snapshot
from localaid.provision.webui.schedule import configure_schedule

Host = WebUIHost  # the seam tests replace

__all__ = [
    "COMPLETE_MARKER", "ENV_FILE", "JOB", "SERVICE_USER", "UNIT", "UNIT_DATA_DIR", "Ctx", "Host", "Layout", "Seed",
    "build_env", "current_version", "doctor_checks", "installer_progress", "is_complete", "journal", "pip_config",
    "pip_env", "pip_flags", "provision_main", "backup_main", "list_main", "restore_main", "prune", "python_problem", "render_dropin", "render_env",
    "render_setup_dropin", "switch_current", "upgrade_main", "uv_args", "venv_version",
]


def _lock(ctx) -> Lock:
    os.makedirs(ctx.layout.base, mode=0o755, exist_ok=True)
    return Lock(ctx.layout.lock, "localaid Open WebUI job", wait=True, rep=ctx.rep)


def provision_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid provision webui` (localaid-webui-setup.service): install/configure, idempotent."""
    ctx = ctx or Ctx(config)
    try:
        with _lock(ctx):
            https.before_webui(ctx)  # first: Open WebUI may take webui.listen back
            if not config.webui.enabled:
                rc = disable(ctx)
                if https.wanted(config):  # a GPU node's ollama.expose
                    https.start(ctx)
                return rc
            ctx.rep.step("configuring Open WebUI", 0.0)
            changed = configure(ctx)
            configure_schedule(ctx)
            rc = restore.run(ctx)  # a restore a kill interrupted: completed first
            if rc is not None:
                return rc
            rc = run(ctx)
            if rc is not None:
                return rc
            rc = install(ctx, wanted_version(config, ctx.layout), config.webui.version, restart=changed)
            if rc == 0 and https.wanted(config):
                https.start(ctx)
            return rc
    except JobError as e:
        ctx.rep.failed(str(e), e.tail, e.blocked)
        return 1


def upgrade_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid upgrade webui [--version V]`: build beside, back up, switch, verify, or roll back."""
    ctx = ctx or Ctx(config)
    if not config.webui.enabled:
        print("webui.enabled is false in the configuration: nothing to upgrade", file=sys.stderr)
        return 1
    target = getattr(args, "target_version", None) or config.webui.version
    try:
        with _lock(ctx):
            configure(ctx)
            rc = run(ctx)
            if rc is not None and rc != 0:
                return rc
            if current_version(ctx.layout) == target and is_complete(ctx.layout, target):
                print(f"Open WebUI {target} is already installed and current")
                return install(ctx, target, config.webui.version)
            rc = install(ctx, target, config.webui.version)
            if rc == 0 and target != config.webui.version:
                print(f"note: webui.version in the configuration is still {config.webui.version}; "
                      f"localaid keeps {target} until you change it")
            if rc != 0:
                p = progress.read(ctx.job)
                print(f"error: {p.text if p else 'upgrade failed'}", file=sys.stderr)
            return rc
    except JobError as e:
        ctx.rep.failed(str(e), e.tail, e.blocked)
        print(f"error: {e}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------ backups
def backup_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid backup` (localaid-backup.service): a backup while Open WebUI serves, then retention."""
    ctx = ctx or Ctx(config, job="backup")
    if not config.webui.enabled:
        print("webui.enabled is false in the configuration: nothing to back up", file=sys.stderr)
        return 1
    status = ctx.layout.p(backups.STATUS_FILE)
    try:
        with _lock(ctx):
            ctx.rep.step("backing up Open WebUI", 0.0)
            b = snapshot.take(ctx, backups.SCHEDULED, online=True)
            backups.prune(ctx.layout.p(config.backup.dir), config, time.time(), ctx.rep.say)
    except JobError as e:
        backups.record({"at": time.time(), "ok": False, "error": str(e)}, status)
        ctx.rep.failed(str(e), e.tail, e.blocked)
        return 1
    backups.record({"at": time.time(), "ok": b.good, "name": b.name, "size": b.size,
                    "error": "; ".join(b.problems) or None}, status)
    if not b.good:
        ctx.rep.failed(f"backup {b.path} written, with problems: {'; '.join(b.problems)}")
        return 1
    ctx.rep.done(f"backup {b.path}: {format_size(b.size)} in {len(b.files)} files")
    return 0


def list_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid restore` without BACKUP, `localaid backup --list`: the backups, newest first."""
    ctx = ctx or Ctx(config, job=None)
    store = ctx.layout.p(config.backup.dir)
    found = backups.listing(store)
    if not found:
        print(f"no backups in {store} yet (localaid backup takes one)")
        return 0
    print(f"{'#':>3}  {'backup':<34} {'taken (local time)':<19}  {'Open WebUI':<10} {'size':>9}  state")
    for i, b in enumerate(reversed(found), 1):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.taken_at))
        state = "good" if b.good else "PROBLEMS: " + "; ".join(b.problems)
        print(f"{i:>3}  {b.name:<34} {when:<19}  {b.webui_version or '-':<10} {format_size(b.size):>9}  {state}")
    print(f"\nin {store}; restore one with: localaid restore NUMBER|NAME|latest")
    return 0


def restore_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid restore BACKUP`: a journaled restore (restore.py), after any interrupted one."""
    ctx = ctx or Ctx(config, job="restore", rep=Reporter("restore", terminal=True))
    if not config.webui.enabled:
        print("webui.enabled is false in the configuration: nothing to restore into", file=sys.stderr)
        return 1
    store = ctx.layout.p(config.backup.dir)
    try:
        with _lock(ctx):
            rc = restore.run(ctx)
            if rc is not None:
                print("(that was an interrupted restore; run localaid restore again for another)")
                return rc
            b = backups.find(store, None if args.backup == "latest" else args.backup)
            if b is None:
                print(f"error: no backup {args.backup!r} in {store} (localaid restore lists them)", file=sys.stderr)
                return 1
            return restore.start(ctx, b, force=args.force)
    except JobError as e:
        ctx.rep.failed(str(e), e.tail, e.blocked)
        return 1

