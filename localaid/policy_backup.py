"""Backups in STATUS (pure): the age of the last good backup, and a warning when the last one
failed or the last good one is older than twice backup.schedule."""

from __future__ import annotations

from localaid.records import BackupObs


def age_text(seconds: float) -> str:
    """"< 1 h", "5 h", "3.2 d": coarse, so that STATUS does not change every second."""
    if seconds < 3600:
        return "< 1 h"
    return f"{seconds / 86400:.1f} d" if seconds >= 48 * 3600 else f"{seconds // 3600:.0f} h"


def backup_stale(config, b: BackupObs | None) -> bool:
    """The last good backup (or, without one, the start of the schedule) is older than twice
    the schedule: what the STATUS warning and the alert rule say."""
    if b is None:
        return False
    ref = b.good_at if b.good_at is not None else b.since
    return ref is not None and b.wall - ref > 2 * config.backup.interval


def backup_fragment(config, b: BackupObs | None) -> str | None:
    if b is None:
        return None
    failed_last = b.last_error is not None and b.last_at is not None and (b.good_at or 0) < b.last_at
    if failed_last:
        return f"backup failed {age_text(b.wall - b.last_at)} ago: {b.last_error[:100]}"
    if backup_stale(config, b):
        last = f"last good backup {age_text(b.wall - b.good_at)} ago" if b.good_at is not None else "no backup yet"
        return f"{last} (schedule {config.backup.schedule}): journalctl -u localaid-backup"
    if b.good_at is not None:
        return f"backup {age_text(b.wall - b.good_at)} ago"
    return None
