"""`localaid doctor`'s findings about Open WebUI: journal, venvs, interpreter, secrets, data
dir, HTTP and the admin account."""

from __future__ import annotations

import os
import pwd
import time

from localaid import fsutil
from localaid.policy_backup import age_text
from localaid.quantity import format_size
from localaid.records import Check
import localaid.provision.webui.backups as backups
import localaid.provision.webui.interpreter as interpreter
from localaid.provision.webui.installer import WebUIHost
from localaid.provision.webui.nodes import node_checks
from localaid.provision.webui.layout import (
    SERVICE_USER, Ctx, Layout, current_version, is_complete, journal, marker, wanted_version)
from localaid.provision.webui.service import base_url


def doctor_checks(config, layout: Layout | None = None) -> list[Check]:
    layout = layout or Layout()
    w = config.webui
    if not w.enabled:
        return [Check("open-webui", True, "disabled in the configuration (webui.enabled: false)")]
    checks = []
    j = journal(layout).read()
    if j:
        checks.append(Check("open-webui upgrade", False,
                            f"an upgrade to {j.get('to')} was interrupted at step {j['step']}",
                            "finish or roll it back: localaid provision webui (or restart localaid)"))
    cur = current_version(layout)
    wanted = wanted_version(config, layout)
    if cur is None:
        checks.append(Check("open-webui venv", False, f"no venv installed under {layout.venvs}",
                            "systemctl start localaid-webui-setup; journalctl -u localaid-webui-setup"))
    elif not is_complete(layout, cur):
        checks.append(Check("open-webui venv", False, f"venv {cur} is incomplete",
                            "localaid provision webui rebuilds it"))
    else:
        m = marker(layout, cur)
        ok = True if cur == wanted else None
        checks.append(Check("open-webui venv", ok,
                            f"Open WebUI {cur} ({m.get('installer', '?')}, {m.get('packages', '?')} "
                            f"packages)" + ("" if ok else f"; configured: {wanted}"),
                            "" if ok else "localaid upgrade webui"))
    others = [v for v in layout.versions() if v != cur]
    if others:
        checks.append(Check("open-webui old venvs", True, "kept for rollback: " + ", ".join(others)))
    host = WebUIHost()
    ok, words = interpreter.describe(Ctx(config, layout, host), wanted)
    checks.append(Check("open-webui python", ok if ok is not False or cur is None else None, words,
                        "" if ok else "journalctl -u localaid-webui-setup"))
    for path, what in ((layout.env_file, "environment file"), (layout.secret, "secret key"),
                       (layout.p(w.admin.password_file), "admin password file")):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            checks.append(Check(f"open-webui {what}", None if cur is None else False, f"{path} missing",
                                "localaid provision webui creates it"))
            continue
        mode = st.st_mode & 0o777
        checks.append(Check(f"open-webui {what}", mode & 0o077 == 0, f"{path} mode {mode:04o}",
                            f"chmod 600 {path}"))
    try:
        st = os.lstat(layout.p(w.data_dir))
        owner = pwd.getpwuid(st.st_uid).pw_name
        ok = owner == SERVICE_USER and st.st_mode & 0o077 == 0
        checks.append(Check("open-webui data", ok, f"{w.data_dir} owned by {owner}, mode {st.st_mode & 0o777:04o}",
                            f"chown -R {SERVICE_USER}: {w.data_dir}; chmod 700 {w.data_dir}"))
    except (FileNotFoundError, KeyError) as e:
        checks.append(Check("open-webui data", None, f"{w.data_dir}: {e}"))
    checks += node_checks(config)
    checks += backup_checks(config, layout)
    base = base_url(config)
    status, body = host.get(base + "/api/config")
    if status == 200 and isinstance(body, dict):
        exposed = w.host not in ("127.0.0.1", "::1", "localhost")
        if body.get("onboarding"):
            checks.append(Check("open-webui admin", False if exposed else None,
                                f"no account exists yet and it listens on {w.host}: the first sign-up "
                                f"becomes admin",
                                f"sign in as {w.admin.email} (password in {w.admin.password_file}) — restart "
                                f"open-webui so it creates that admin"))
        else:
            checks.append(Check("open-webui admin", True, f"admin exists; serving {body.get('version')} on {base}"))
    else:
        checks.append(Check("open-webui http", False, f"{base}/api/config: {status or 'no answer'}",
                            "systemctl status open-webui; journalctl -u open-webui"))
    return checks


def backup_checks(config, layout: Layout) -> list[Check]:
    """Backups: an interrupted restore, the last good backup's age, the last run's outcome."""
    checks = []
    rj = fsutil.read_json(os.path.join(layout.base, "restore.json"))
    if isinstance(rj, dict):
        checks.append(Check("open-webui restore", False, f"a restore of {rj.get('backup')} was interrupted at "
                            f"step {rj.get('step')}", "localaid restore (finishes it)"))
    if not config.backup.enabled:
        return checks + [Check("backups", None, "off (backup.enabled: false): nothing backs up Open WebUI's data",
                               "set backup.enabled: true")]
    store = layout.p(config.backup.dir)
    good = backups.latest(store)
    st = backups.status(layout.p(backups.STATUS_FILE))
    last = st.get("last") if isinstance(st.get("last"), dict) else {}
    now = time.time()
    if last and not last.get("ok"):
        checks.append(Check("backups", False, f"the last backup failed: {last.get('error')}",
                            "journalctl -u localaid-backup"))
    elif good is None:
        checks.append(Check("backups", None, f"none yet in {config.backup.dir} (schedule {config.backup.schedule})",
                            "localaid backup takes one now"))
    else:
        old = now - good.taken_at > 2 * config.backup.interval
        checks.append(Check("backups", not old, f"last good {good.name} ({format_size(good.size)}, "
                            f"{age_text(now - good.taken_at)} ago) in {config.backup.dir}, schedule "
                            f"{config.backup.schedule}", "systemctl status localaid-backup.timer" if old else ""))
    return checks

