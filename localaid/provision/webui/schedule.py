"""When backups are taken: localaid-backup.timer, configured from the backup keys.

The package ships the timer (OnCalendar=daily, RandomizedDelaySec=1h, Persistent=true) and the
oneshot unit it starts (`localaid backup`); the set-up job, which runs at every change of the
configuration, writes their drop-ins and enables the timer while backup.enabled and
webui.enabled are both true (disables it otherwise):

    /etc/systemd/system/localaid-backup.timer.d/50-localaid.conf     OnCalendar= (backup.schedule)
    /etc/systemd/system/localaid-backup.service.d/50-localaid.conf   ReadWritePaths= (backup.dir)
"""

from __future__ import annotations

import os
import time

import localaid.provision.webui.backups as backups
from localaid.fsutil import write_if_changed
from localaid.provision.webui.service import unit_path

TIMER = "localaid-backup.timer"
SERVICE = "localaid-backup.service"
TIMER_DROPIN = f"/etc/systemd/system/{TIMER}.d/50-localaid.conf"
SERVICE_DROPIN = f"/etc/systemd/system/{SERVICE}.d/50-localaid.conf"


def render_timer_dropin(config) -> str:
    return ("# written by localaid from backup.schedule; edit /etc/localaid, not this file\n"
            f"[Timer]\nOnCalendar=\nOnCalendar={config.backup.schedule}\n")


def render_service_dropin(config) -> str:
    return ("# written by localaid from backup.dir; edit /etc/localaid, not this file\n"
            f"[Service]\nReadWritePaths={unit_path(config.backup.dir)}\n")


def configure_schedule(ctx) -> None:
    """The timer's drop-ins written, and the timer enabled and started (or stopped and disabled)."""
    layout, host, cfg = ctx.layout, ctx.host, ctx.config
    wanted = cfg.backup.enabled and cfg.webui.enabled
    changed = False
    if wanted:
        os.makedirs(layout.p(cfg.backup.dir), mode=0o711, exist_ok=True)
        for path, text in ((TIMER_DROPIN, render_timer_dropin(cfg)), (SERVICE_DROPIN, render_service_dropin(cfg))):
            os.makedirs(os.path.dirname(layout.p(path)), mode=0o755, exist_ok=True)
            changed |= write_if_changed(layout.p(path), text, 0o644)
        if changed:
            host.daemon_reload()
        if host.unit_state(TIMER).active_state != "active" or changed:
            host.enable(TIMER)
            host.restart(TIMER)
        backups.note_enabled(time.time(), layout.p(backups.STATUS_FILE))
    elif host.unit_state(TIMER).active_state == "active":
        ctx.rep.say("backups are off in the configuration: stopping localaid-backup.timer")
        host.stop(TIMER)
        host.disable(TIMER)
