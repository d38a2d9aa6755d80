"""Code from a package index never runs as root: each installer step of a venv build runs as
the service user in a transient systemd service of its own.

    systemd-run --unit=localaid-webui-build-<what> --wait --pipe --collect --property=… -- ARGV

with User=open-webui, no capabilities (CapabilityBoundingSet= empty, NoNewPrivileges=), the
whole file system read-only (ProtectSystem=strict) but for the paths the step writes (the new
venv and the installers' caches: one writable mount, so that uv can hard-link from its cache
into the venv; the other venvs in it read-only), no /home or /root, a private /tmp, the data
dir out of sight, and RuntimeMaxSec= as a backstop behind the job's own timeout. The unit is
started by PID 1, outside the set-up unit's sandbox, and is not killed with the job: a timeout
stops it by name, and a build left running by a killed job is stopped by the next one before
it starts (same name).

Its environment comes from a root-only file that PID 1 reads (EnvironmentFile=): package index
URLs, which may carry credentials, never appear on a command line (ps shows systemd-run's).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from localaid import fsutil

UNIT_PREFIX = "localaid-webui-build"
STOP_GRACE = 30  # RuntimeMaxSec= is the job's timeout plus this: the job stops the unit first
HARDENING = (
    "NoNewPrivileges=yes", "CapabilityBoundingSet=", "AmbientCapabilities=",
    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes", "RestrictNamespaces=yes", "LockPersonality=yes",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "SystemCallErrorNumber=EPERM",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "ProtectProc=invisible", "PrivateMounts=yes",
    "RemoveIPC=yes", "UMask=0022", "KillMode=control-group", "TimeoutStopSec=15s",
)


@dataclass(frozen=True)
class Jail:
    """Where one installer step may write, and as whom."""
    unit: str                       # the transient unit's name (unit_name())
    user: str                       # User= and Group=
    env_file: str                   # root-only file holding the step's environment
    writable: tuple[str, ...]       # ReadWritePaths=
    readonly: tuple[str, ...] = ()  # ReadOnlyPaths= below a writable path (other venvs)
    hidden: tuple[str, ...] = ()    # InaccessiblePaths= (the data dir)


def unit_name(what: str) -> str:
    """localaid-webui-build-<what>.service, `what` reduced to what unit names allow."""
    return f"{UNIT_PREFIX}-{re.sub(r'[^A-Za-z0-9:_.-]', '_', what)}.service"


def env_quote(value: str) -> str:
    """A value for a systemd EnvironmentFile= line, read back exactly as written."""
    if re.fullmatch(r"[A-Za-z0-9_.,:/@+%=-]*", value):
        return value
    return '"' + re.sub(r'([\\"`$])', r"\\\1", value).replace("\n", "\\n") + '"'


def _path(path: str, prefix: str = "") -> str:
    """One path of a ReadWritePaths=-style list (systemd-run splits on blanks; no specifiers)."""
    item = prefix + path
    return f'"{item}"' if re.search(r"\s", item) else item


def properties(jail: Jail, timeout: float) -> list[str]:
    props = [f"User={jail.user}", f"Group={jail.user}", *HARDENING,
             f"RuntimeMaxSec={int(timeout) + STOP_GRACE}s", f"EnvironmentFile={jail.env_file}",
             "WorkingDirectory=/"]
    props += [f"ReadWritePaths={_path(p)}" for p in jail.writable]
    props += [f"ReadOnlyPaths={_path(p, '-')}" for p in jail.readonly]
    props += [f"InaccessiblePaths={_path(p, '-')}" for p in jail.hidden]
    return props


def command(jail: Jail, argv: list[str], timeout: float) -> list[str]:
    """The systemd-run command line running `argv` in `jail` (nothing secret in it)."""
    return ["systemd-run", f"--unit={jail.unit}", "--quiet", "--wait", "--pipe", "--collect",
            "--service-type=exec", *(f"--property={p}" for p in properties(jail, timeout)), "--", *argv]


def write_env(path: str, env: dict[str, str]) -> None:
    """The step's environment, for EnvironmentFile= (0600 in a 0700 directory, root's)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    lines = [f"{k}={env_quote(v)}" for k, v in env.items() if "\0" not in v]
    fsutil.atomic_write(path, "\n".join(lines) + "\n", mode=0o600)


def remove_env(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def exec_failure(rc: int, unit: str) -> str | None:
    """systemd's own exit statuses (200-243: the service could not even be started)."""
    if 200 <= rc <= 243:
        return (f"systemd could not start the build unit {unit} (exit status {rc}: "
                f"journalctl -u {unit})")
    return None
