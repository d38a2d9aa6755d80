"""Taking a backup of Open WebUI's state: its data dir, secret key, localaid's configuration.

Two ways, one format (backups.py):

online   Open WebUI keeps serving. Its SQLite databases (webui.db, the Chroma vector store's
         chroma.sqlite3) are copied by SQLite's online backup, run as the service user in a
         transient unit (sandbox.py) that writes them into the store's `.staging`: a read
         transaction of WAL mode, so writers are never blocked and the copy is one consistent
         moment. Root then copies them in. The other files (uploads, the vector index's
         segment files) are copied first, so the databases are never older than them.
offline  The service is stopped (an upgrade, a restore keeping what it replaces): every file
         is copied as it is, a WAL beside its database included, and corrupt databases too.

Root reads the service user's files only through safefs (no link followed, FIFOs never
opened; links and special files are skipped and named in the manifest) and opens with SQLite
only its own copies (integrity_check, trusted_schema off). A backup is written as
`.partial-<name>`, checked, hashed, its manifest written last and then renamed: a kill leaves
no directory that looks complete. Free space is checked before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import stat
import sys
import time
import urllib.parse

from localaid import __version__, fsutil
from localaid.provision import safefs
from localaid.provision.job import JobError
import localaid.provision.webui.backups as backups
import localaid.provision.webui.sandbox as sandbox
from localaid.provision.webui.layout import SERVICE_USER, current_version
from localaid.quantity import format_size

SQLITE_NAMES = (".db", ".sqlite", ".sqlite3")
SIDE_FILES = ("-wal", "-shm", "-journal")
LEFT_OUT = frozenset({"cache"})  # the data dir's re-creatable downloads (models, tiktoken)
SPARE = 64 << 20  # kept free on the target beyond the backup's own size
SNAPSHOT_TIMEOUT = 7200.0  # SQLite's copy of the databases, as localaid-backup.service's TimeoutStartSec=
CONFIG_DIR = "/etc/localaid"

# Run as the service user: each (source, destination) pair by SQLite's online backup API; the
# copy is switched out of WAL mode so that it is one self-contained file.
SNAPSHOT_SCRIPT = r"""
import sqlite3, sys, urllib.parse
args = sys.argv[1:]
for src, dst in zip(args[::2], args[1::2]):
    try:
        s = sqlite3.connect("file:" + urllib.parse.quote(src) + "?mode=ro", uri=True, timeout=60)
        d = sqlite3.connect(dst)
        s.backup(d)
        d.execute("PRAGMA journal_mode=DELETE")
        d.close()
        s.close()
        print("ok", src, flush=True)
    except sqlite3.Error as e:
        print("failed", src, str(e).replace("\n", " "), flush=True)
"""


def is_database(name: str) -> bool:
    return name.endswith(SQLITE_NAMES)


def is_side_file(name: str) -> bool:
    return any(name.endswith(n + s) for n in SQLITE_NAMES for s in SIDE_FILES)


# ------------------------------------------------------------------------------------ scan
def scan(data_dir: str, online: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """The data dir's regular files to back up as (relative path, size), databases last, and
    what was skipped (links, special files). Online, SQLite's side files stay out (the online
    backup reads them); offline a WAL is copied with its database."""
    files, skipped = [], []
    for top, dirs, names, dfd in os.fwalk(data_dir, follow_symlinks=False):
        rel_top = os.path.relpath(top, data_dir)
        if rel_top == ".":
            dirs[:] = [d for d in dirs if d not in LEFT_OUT]
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            rel = os.path.normpath(os.path.join(rel_top, name))
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                skipped.append(rel)
            elif not (is_side_file(name) and (online or not name.endswith("-wal"))):
                files.append((rel, st.st_size))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    files.sort(key=lambda f: (is_database(f[0]), f[0]))
    return files, skipped


def check_room(host, store: str, need: int) -> None:
    free = host.free_bytes(store)
    if free < need + SPARE:
        raise JobError(f"not enough space in {store} for a backup: it needs about {format_size(need)}, "
                       f"{format_size(free)} free there (nothing was written; the earlier backups are intact)",
                       blocked=None)


# ------------------------------------------------------------------------------- the store
def prepare_store(ctx) -> str:
    """backup.dir as root's 0711 directory (not a link), leftovers of killed backups removed."""
    store = ctx.layout.p(ctx.config.backup.dir)
    os.makedirs(store, mode=0o711, exist_ok=True)
    if os.path.islink(store) or not os.path.isdir(store):
        raise JobError(f"backup.dir {ctx.config.backup.dir} is not a directory (a link is refused)")
    os.chown(store, 0, 0, follow_symlinks=False)
    os.chmod(store, 0o711)
    for name in os.listdir(store):
        if name.startswith(backups.PARTIAL):
            ctx.rep.say("removing a backup left incomplete by an earlier run", path=os.path.join(store, name))
            safefs.remove_tree(os.path.join(store, name))
    return store


@contextlib.contextmanager
def _staging(ctx, store: str):
    """`.staging` in the store, the service user's (0700) and emptied before and after."""
    path = os.path.join(store, backups.STAGING)
    safefs.remove_tree(path)
    uid, gid = ctx.host.ids(SERVICE_USER)
    safefs.ensure_dir(path, 0o700, uid, gid)
    try:
        yield path
    finally:
        safefs.remove_tree(path)


# ----------------------------------------------------------------------------- copying in
def _open_below(top: str, rel: str, owner: int | None) -> int:
    """`rel` below `top`, every directory on the way opened without following a link."""
    fd = os.open(top, safefs.DIR_FLAGS)
    try:
        for part in os.path.dirname(rel).split("/"):
            if part:
                nfd = os.open(part, safefs.DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        return safefs.open_file(fd, os.path.basename(rel), owner)
    finally:
        os.close(fd)


def copy_in(src_top: str, rel: str, out_top: str, out_rel: str, owner: int | None) -> None:
    """Copy `src_top/rel` (link-safe) to root's `out_top/out_rel` (0600)."""
    src = _open_below(src_top, rel, owner)
    try:
        with safefs.directory(out_top) as ofd:
            dfd = safefs.open_dirs(ofd, os.path.dirname(out_rel))
            try:
                safefs.write(dfd, os.path.basename(out_rel), src, 0o600)
            finally:
                os.close(dfd)
    finally:
        os.close(src)


def _copy_or_fail(ctx, store: str, copy, what: str, size: int) -> None:
    try:
        copy()
    except safefs.UnsafeFile as e:
        raise JobError(f"{what}: {e.strerror}: not backed up") from None
    except OSError as e:
        free = ctx.host.free_bytes(store)
        raise JobError(f"cannot back up {what} ({format_size(size)}) to {store}: {e.strerror or e} "
                       f"({format_size(free)} free there)") from None


# --------------------------------------------------------------------------------- SQLite
def snapshot_databases(ctx, store: str, data_dir: str, dbs: list[tuple[str, int]], out: str) -> list[str]:
    """SQLite's online backup of each database, as the service user; copied into `out`/data.
    Problems (a database SQLite cannot read) are returned; such a file is copied as it is."""
    problems = []
    uid, _ = ctx.host.ids(SERVICE_USER)
    with _staging(ctx, store) as staging:
        pairs = []
        for i, (rel, _size) in enumerate(dbs):
            pairs += [os.path.join(data_dir, rel), os.path.join(staging, f"{i}.db")]
        argv = [sys.executable, "-I", "-c", SNAPSHOT_SCRIPT, *pairs]
        r = ctx.host.sandboxed(argv, _jail(ctx, staging, data_dir), {}, SNAPSHOT_TIMEOUT)
        failed = snapshot_failures(r.tail, pairs, data_dir)
        for i, (rel, size) in enumerate(dbs):
            target = os.path.join("data", rel)
            if rel in failed:
                problems.append(f"{rel}: SQLite could not read it ({failed[rel]}); copied as it is")
                _copy_or_fail(ctx, store, lambda: copy_in(data_dir, rel, out, target, uid), rel, size)
            else:
                _copy_or_fail(ctx, store, lambda: copy_in(staging, f"{i}.db", out, target, uid), rel, size)
    return problems


def _jail(ctx, staging: str, data_dir: str) -> sandbox.Jail:
    """The snapshot's unit: writes the staging dir and the data dir (WAL's shared memory)."""
    unit = sandbox.unit_name("backup")
    return sandbox.Jail(unit, SERVICE_USER, os.path.join(ctx.layout.build_env_dir, unit + ".env"),
                        (staging, data_dir))


def snapshot_failures(lines, pairs: list[str], data_dir: str) -> dict[str, str]:
    """The databases the snapshot script did not copy (relative path → why), from its output."""
    done = {line.split(" ", 1)[1] for line in lines if line.startswith("ok ")}
    why = {}
    for line in lines:
        if line.startswith("failed "):
            src, _, text = line[len("failed "):].partition(" ")
            why[src] = text
    out = {}
    for src in pairs[::2]:
        if src not in done:
            out[os.path.relpath(src, data_dir)] = why.get(src, "the snapshot did not run")
    return out


def integrity(path: str) -> str:
    """PRAGMA integrity_check of root's own copy: "ok" or the first problems. The copy's bytes
    stay as they are: opened immutable, or, with a WAL beside it (a crash), checked on a
    scratch copy where SQLite may apply the WAL."""
    if not os.path.exists(path + "-wal"):
        return _check("file:" + urllib.parse.quote(path) + "?immutable=1")
    scratch = os.path.join(os.path.dirname(path), ".check-" + os.path.basename(path))
    try:
        for suffix in ("", "-wal"):
            shutil.copyfile(path + suffix, scratch + suffix)
        return _check("file:" + urllib.parse.quote(scratch))
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(scratch + suffix)


def _check(uri: str) -> str:
    try:
        con = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            con.execute("PRAGMA trusted_schema=OFF")
            rows = [r[0] for r in con.execute("PRAGMA integrity_check(5)")]
        finally:
            con.close()
    except sqlite3.Error as e:
        return str(e)
    return "ok" if rows == ["ok"] else "; ".join(str(r) for r in rows)


# --------------------------------------------------------------------------------- take
def take(ctx, reason: str, online: bool = True) -> backups.Backup:
    """A complete backup in backup.dir (see the module docstring), or a JobError that leaves none."""
    hook = ctx.hook or (lambda step: None)
    store = prepare_store(ctx)
    data_dir = ctx.data_dir()
    files, skipped = scan(data_dir, online) if os.path.isdir(data_dir) else ([], [])
    extras = _extras(ctx)
    staged = sum(s for rel, s in files if online and is_database(rel))  # in .staging, then copied
    check_room(ctx.host, store, sum(s for _, s in files) + sum(s for _, _, s in extras) + staged)
    name = backups.new_name(store, reason)
    out = os.path.join(store, backups.PARTIAL + name)
    os.mkdir(out, 0o700)
    try:
        manifest = _fill(ctx, store, out, files, skipped, extras, online, reason)
    except Exception:
        safefs.remove_tree(out)  # a failure leaves nothing; a kill leaves .partial- for the next run
        raise
    fsutil.write_json(os.path.join(out, backups.MANIFEST), manifest, mode=0o600)
    hook("rename")
    os.rename(out, os.path.join(store, name))
    with safefs.directory(store) as sfd:
        os.fsync(sfd)
    return backups.read(store, name)


def _fill(ctx, store: str, out: str, files, skipped, extras, online: bool, reason: str) -> dict:
    """Copy everything into the partial backup `out`, check it; its manifest."""
    hook = ctx.hook or (lambda step: None)
    data_dir = ctx.data_dir()
    uid, _ = ctx.host.ids(SERVICE_USER)
    hook("files")
    plain = [f for f in files if not (online and is_database(f[0]))]
    dbs = [f for f in files if online and is_database(f[0])]
    done = 0
    for rel, size in plain:
        ctx.rep.progress("running", f"backing up {rel}", 0.05 + 0.6 * done / max(1, len(files)))
        _copy_or_fail(ctx, store, lambda: copy_in(data_dir, rel, out, os.path.join("data", rel), uid), rel, size)
        done += 1
    for top, rel, _size in extras:
        copy_in(top, rel, out, _extra_target(top, rel), None)
    hook("databases")
    problems = []
    for rel in skipped:
        ctx.rep.warn(f"not backed up: {os.path.join(data_dir, rel)} is a link or a special file (not followed)")
    if dbs:
        ctx.rep.step(f"backing up {', '.join(r for r, _ in dbs)} ({format_size(sum(s for _, s in dbs))})", 0.7)
        problems += snapshot_databases(ctx, store, data_dir, dbs, out)
    hook("check")
    checks = {rel: integrity(os.path.join(out, "data", rel)) for rel, _ in files if is_database(rel)}
    problems += [f"{rel}: integrity_check: {v}" for rel, v in checks.items() if v != "ok"]
    hook("manifest")
    manifest = {"format": backups.FORMAT, "taken_at": time.time(), "reason": reason, "online": online,
                "webui_version": current_version(ctx.layout), "localaid_version": __version__,
                "data_dir": ctx.config.webui.data_dir, "models": _models(ctx), "integrity": checks,
                "problems": problems, "skipped": skipped, "files": _hashes(out)}
    return manifest


def _extras(ctx) -> list[tuple[str, str, int]]:
    """Files beside the data dir: the secret key, and localaid's configuration (top, rel, size)."""
    out = []
    secret = ctx.layout.secret
    with contextlib.suppress(OSError):
        with safefs.directory(os.path.dirname(secret)) as dfd:
            size = safefs.size(dfd, os.path.basename(secret))
            if size is not None:
                out.append((os.path.dirname(secret), os.path.basename(secret), size))
    conf = ctx.layout.p(CONFIG_DIR)
    for top, _dirs, names in os.walk(conf) if os.path.isdir(conf) else ():
        for name in sorted(names):
            path = os.path.join(top, name)
            if name.endswith((".yaml", ".yml")) and os.path.isfile(path) and not os.path.islink(path):
                out.append((conf, os.path.relpath(path, conf), os.path.getsize(path)))
    return out


def _extra_target(top: str, rel: str) -> str:
    return "secret-key" if rel == "secret-key" else os.path.join("etc", "localaid", rel)


def _hashes(out: str) -> dict[str, dict]:
    files = {}
    for top, _dirs, names, dfd in os.fwalk(out, follow_symlinks=False):
        for name in names:
            rel = os.path.relpath(os.path.join(top, name), out)
            h = hashlib.sha256()
            fd = safefs.open_file(dfd, name)
            with os.fdopen(fd, "rb") as f:
                for chunk in iter(lambda: f.read(safefs.CHUNK), b""):
                    h.update(chunk)
            files[rel] = {"size": os.stat(name, dir_fd=dfd).st_size, "sha256": h.hexdigest()}
    return dict(sorted(files.items()))


def _models(ctx) -> list[str] | None:
    """The models Ollama holds (re-pullable, so only their names), None when it does not answer."""
    if not ctx.config.ollama.enabled:
        return None
    code, body = ctx.host.get(ctx.config.ollama.url + "/api/tags", timeout=5.0)
    if code != 200 or not isinstance(body, dict):
        return None
    return sorted(str(m.get("name")) for m in body.get("models") or () if isinstance(m, dict))
