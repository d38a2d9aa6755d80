"""`localaid doctor`: checks with advice, then a non-zero exit status when something needs fixing.

The core checks are here; each area (devices, Ollama, Open WebUI) contributes its own through
`doctor_checks(config)`, called by module name: the provisioning modules are imported only now.
Checks are plain data (localaid.records.Check); render() turns them into the lines printed.
"""

from __future__ import annotations

import importlib
import time

from localaid import fsutil, paths
from localaid.cli.common import EX_FAIL, EX_OK, load_config
from localaid.records import Check

MARKS = {True: "ok  ", None: "warn", False: "FAIL"}


def main(args) -> int:
    checks = run(load_config(args))
    print(render(checks))
    return exit_code(checks)


# Modules whose doctor_checks(config) run after the core checks, in this order.
AREAS = ("localaid.provision.devices", "localaid.provision.ollama", "localaid.provision.webui",
         "localaid.provision.https.doctor")


def core_checks(config) -> list[Check]:
    from localaid.adapters.systemd import Systemd, SystemdError
    checks = [Check("config", True, "configuration valid: " + (", ".join(config.sources) or "defaults"))]
    try:
        sd = Systemd(timeout=3)
        state = sd.state("localaid.service")
        ok = state.active_state == "active"
        checks.append(Check("daemon", ok, f"localaid.service is {state.active_state} ({state.sub_state})",
                            "" if ok else "start it: systemctl start localaid; see: journalctl -u localaid"))
    except SystemdError as e:
        checks.append(Check("systemd", False, str(e), "localaid needs systemd as init (PID 1)"))
    status = fsutil.read_json(paths.STATUS_FILE)
    if isinstance(status, dict):
        age = time.time() - float(status.get("written", 0))
        fresh = age < max(30.0, 5 * config.health.interval)
        checks.append(Check("status", fresh if fresh else None,
                            f"last cycle {age:.0f} s ago: {status.get('status_line', '')}",
                            "" if fresh else "the supervisor loop is not completing cycles: journalctl -u localaid"))
    return checks


def run(config) -> list[Check]:
    checks = core_checks(config)
    for name in AREAS:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            checks.append(Check(name.rsplit(".", 1)[-1], False, f"cannot load {name}: {e}"))
            continue
        fn = getattr(module, "doctor_checks", None)
        if fn is None:
            continue
        try:
            checks.extend(fn(config))
        except Exception as e:  # a broken check must not hide the others
            checks.append(Check(name.rsplit(".", 1)[-1], False, f"check crashed: {e!r}"))
    return checks


def exit_code(checks: list[Check]) -> int:
    """1 when a check failed; warnings and skipped checks leave it 0."""
    return EX_FAIL if any(c.ok is False for c in checks) else EX_OK


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{'skip' if c.skipped else MARKS[c.ok]}] {c.name}: {c.message}")
        if c.advice and c.ok is not True:
            lines.append(f"       → {c.advice}")
    return "\n".join(lines)
