"""The backup store: what a backup is on disk, which ones are complete and good, which go.

    <backup.dir>/                       root's, 0711 (the service user may reach .staging only)
        20261206T031500Z-scheduled/     one backup, root's 0700, named <UTC time>-<reason>
            manifest.json               written last: versions, models, every file's size and
                                        sha256, each database's integrity_check
            data/webui.db               Open WebUI's data dir (cache/ left out); its SQLite
            data/vector_db/…            databases as SQLite's online backup wrote them
            data/uploads/…
            secret-key                  WEBUI_SECRET_KEY (sessions, stored credentials)
            etc/localaid/…              localaid's configuration, for reference
        .partial-<name>/                a backup being written: renamed to <name> when complete,
                                        removed by the next backup when a kill left it
        .staging/                       the service user's (0700): SQLite snapshots before root
                                        copies them in (snapshot.py)
    /var/lib/localaid/backup-status.json   the last run and the last good one, for STATUS

A directory counts as a backup only with its final name and a manifest that parses: a backup
killed half-way leaves a `.partial-` directory, which nothing lists or restores.

Reasons: "scheduled" (the timer, `localaid backup`) are kept by backup.keep and backup.max_age;
"before-upgrade" and "before-restore" (taken by those jobs) by webui.keep_backups.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from localaid import fsutil, paths

FORMAT = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial-"
STAGING = ".staging"
SCHEDULED = "scheduled"
SAFETY_REASONS = ("before-upgrade", "before-restore")
NAME = re.compile(r"(\d{8}T\d{6}Z)-(scheduled|before-upgrade|before-restore)(?:-\d+)?")
STATUS_FILE = paths.BACKUP_STATUS_FILE


@dataclass(frozen=True)
class Backup:
    """One complete backup, as its manifest describes it."""
    name: str
    path: str
    taken_at: float
    reason: str
    webui_version: str | None
    localaid_version: str | None
    size: int
    problems: tuple[str, ...]       # integrity_check answers other than "ok", files not copied
    manifest: dict

    @property
    def good(self) -> bool:
        return not self.problems

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest.get("files") or {}


def new_name(store: str, reason: str, now: float | None = None) -> str:
    """<UTC time>-<reason>, with -2, -3 … when that second already has one."""
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + reason
    taken, n = set(os.listdir(store)), 1
    while (name if n == 1 else f"{name}-{n}") in taken:
        n += 1
    return name if n == 1 else f"{name}-{n}"


def _taken_at(name: str) -> float:
    return float(calendar.timegm(time.strptime(NAME.fullmatch(name).group(1), "%Y%m%dT%H%M%SZ")))


def read(store: str, name: str) -> Backup | None:
    """The backup `name` in `store`, None when it is not a complete one."""
    m = NAME.fullmatch(name)
    if not m:
        return None
    path = os.path.join(store, name)
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            doc = json.loads(f.read(16 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
        return None
    files = doc["files"]
    return Backup(name, path, _taken_at(name), m.group(2), doc.get("webui_version"), doc.get("localaid_version"),
                  sum(int(f.get("size", 0)) for f in files.values() if isinstance(f, dict)),
                  tuple(str(p) for p in doc.get("problems") or ()), doc)


def listing(store: str) -> list[Backup]:
    """The complete backups in `store`, oldest first."""
    try:
        names = sorted(os.listdir(store))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [b for b in (read(store, n) for n in names) if b is not None]


def latest(store: str) -> Backup | None:
    """The newest good backup of the data as it was in use: not one a restore kept of what it
    replaced (those are restored by name or number, to undo a restore)."""
    found = [b for b in listing(store) if b.good and b.reason != "before-restore"]
    return found[-1] if found else None


def find(store: str, which: str | None) -> Backup | None:
    """A backup by name, by its number in `localaid restore`'s list (1 = newest), or (None)
    latest()."""
    backups = listing(store)
    if which is None:
        return latest(store)
    if which.isdigit():
        i = int(which)
        return backups[-i] if 1 <= i <= len(backups) else None
    return next((b for b in backups if b.name == which.rstrip("/").rpartition("/")[2]), None)


def to_remove(backups: list[Backup], keep: int, max_age: float, keep_safety: int, now: float) -> list[Backup]:
    """Retention (pure): of the scheduled backups, those beyond the newest `keep` or older than
    `max_age`; of those taken before an upgrade or a restore, those beyond the newest
    `keep_safety`. The newest good backup stays whatever its age."""
    newest = sorted(backups, key=lambda b: b.name)
    good = [b for b in newest if b.good]
    stays = good[-1].name if good else None
    scheduled = [b for b in newest if b.reason == SCHEDULED]
    safety = [b for b in newest if b.reason != SCHEDULED]
    out = scheduled[:-keep] if len(scheduled) > keep else []
    out += [b for b in scheduled[-keep:] if now - b.taken_at > max_age]
    out += safety[:-keep_safety] if len(safety) > keep_safety else []
    return sorted((b for b in out if b.name != stays), key=lambda b: b.name)


def prune(store: str, config, now: float, say) -> list[str]:
    """Remove what to_remove() picks (say(text, **fields) tells each); the names removed."""
    from localaid.provision import safefs
    gone = to_remove(listing(store), config.backup.keep, config.backup.max_age, config.webui.keep_backups, now)
    for b in gone:
        say("removing an old backup", backup=b.name)
        safefs.remove_tree(b.path)
    return [b.name for b in gone]


def verify(b: Backup) -> list[str]:
    """Files of `b` whose bytes are not the ones its manifest records (missing, changed)."""
    bad = []
    for rel, rec in sorted(b.files.items()):
        h = hashlib.sha256()
        try:
            with open(os.path.join(b.path, rel), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            bad.append(f"{rel}: {e.strerror or e}")
            continue
        if h.hexdigest() != rec.get("sha256"):
            bad.append(f"{rel}: changed since the backup was taken")
    return bad


# -------------------------------------------------------------------------- the last outcome
def record(outcome: dict, path: str = STATUS_FILE) -> None:
    """Note a backup's outcome: {"at", "ok", "name", "size", "error"}; a good one is also kept
    as "last_good"."""
    doc = status(path)
    doc["last"] = outcome
    if outcome.get("ok"):
        doc["last_good"] = outcome
    fsutil.write_json(path, doc, mode=0o644)


def note_enabled(now: float, path: str = STATUS_FILE) -> None:
    """The time backups were first scheduled: "no backup yet" is a warning only once two
    schedule intervals passed since then."""
    doc = status(path)
    if "since" not in doc:
        doc["since"] = now
        fsutil.write_json(path, doc, mode=0o644)


def status(path: str = STATUS_FILE) -> dict:
    doc = fsutil.read_json(path)
    return doc if isinstance(doc, dict) else {}
