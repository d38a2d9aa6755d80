"""Ollama through its official install script: install, configure, upgrade, pull models.

`provision_main` runs as root in localaid-ollama-setup.service (a oneshot the supervisor starts;
its ExecStartPre, outside the unit's sandbox, runs the "prepare" stage: user ollama and the
models directory); `upgrade_main` is `localaid upgrade ollama [--version V]`. On the
provisioning skeleton (localaid.provision.job, .host). The pieces:

    layout   every path (a temporary root in tests)
    script   where the install script may come from, the download, the checks before it runs
    dropin   the drop-in for ollama.service and its environment file
    service  user, models directory, configure/start/wait ready, installed version
    install  snapshot, running the script, the journaled install/upgrade and its rollback
    models   pulling the configured models
    doctor   `localaid doctor`'s checks

A provision run skips the script when Ollama is installed and either no version is pinned or
the installed one is the pinned one: a second run downloads nothing. Upgrades are explicit.
Either first finishes what a killed run left (Install.resume).
"""

from __future__ import annotations

import os

from localaid.adapters.systemd import SystemdError
from localaid.provision.host import Host
from localaid.provision.job import Hook, JobError, Lock, Reporter
from localaid.provision.ollama.doctor import doctor_checks
from localaid.provision.ollama.dropin import environment, nvidia_nodes, render_dropin, render_env_file, write_dropin
from localaid.provision.ollama.install import Install, Snapshot, run_script
from localaid.provision.ollama.layout import JOB, LAYOUT, UNIT, Layout
from localaid.provision.ollama.models import pull_models
from localaid.provision.ollama.script import (
    RefusedError, ScriptError, download, obtain_script, validate_script)
from localaid.provision.ollama.service import (
    configure_service, ensure_models_dir, ensure_user, installed_version, models_dir_step, parse_version_output,
    preflight)

__all__ = [
    "JOB", "LAYOUT", "UNIT", "Install", "Layout", "RefusedError", "ScriptError", "Snapshot", "doctor_checks",
    "download", "ensure_models_dir", "environment", "installed_version", "nvidia_nodes", "obtain_script",
    "parse_version_output", "preflight", "prepare", "provision", "provision_main", "pull_models",
    "render_dropin", "render_env_file", "run_script", "upgrade", "upgrade_main", "validate_script",
    "write_dropin",
]

# localaid-ollama-setup.service runs `localaid provision ollama` twice: as ExecStartPre=+ with
# this set to "prepare" (outside the sandbox) and as ExecStart (inside it).
STAGE_ENV = "LOCALAID_OLLAMA_STAGE"


def _ready_timeout(config) -> float:
    return max(60.0, config.health.ollama_start_grace)


def _lock(layout: Layout) -> Lock:
    return Lock(layout.lock, "Ollama install or upgrade (localaid-ollama-setup.service or "
                             "`localaid upgrade ollama`)", wait=False)


def provision_main(args, config) -> int:
    rep = Reporter(JOB, terminal=False)
    if os.geteuid() != 0:
        rep.failed("localaid provision ollama must run as root (it runs in localaid-ollama-setup.service)")
        return 1
    if os.environ.get(STAGE_ENV) == "prepare":
        return prepare(config, rep, Host())
    return provision(config, rep, Host())


def prepare(config, rep: Reporter, host: Host, layout: Layout = LAYOUT) -> int:
    """What the install script's sandbox cannot do: create user ollama (its home is under
    /usr/share, read-only there) and give it ollama.models_dir (anywhere on the system)."""
    try:
        with _lock(layout):
            if ensure_user(host):
                rep.step("created user ollama (home /usr/share/ollama), as the install script would")
            models_dir_step(config.ollama, rep, host)
    except JobError as e:
        rep.failed(f"ollama setup failed: {e}", e.tail)
        return 1
    return 0


def _begin(config, rep: Reporter, host: Host, layout: Layout, hook: Hook | None) -> tuple[Install, str | None]:
    """The job, after it finished what a killed run left; and the Ollama version installed now."""
    job = Install(config.ollama, rep, host, layout, _ready_timeout(config), hook, config.wanted_models)
    job.resume()
    return job, installed_version(layout.bin, host=host)


def provision(config, rep: Reporter, host: Host, layout: Layout = LAYOUT, hook: Hook | None = None) -> int:
    cfg = config.ollama
    try:
        with _lock(layout):
            job, have = _begin(config, rep, host, layout, hook)
            run = have is None or (cfg.version is not None and have != cfg.version)
            if have is None:
                rep.step("Ollama is not installed: installing it with its install script")
            elif run:
                rep.step(f"Ollama {have} is installed, {cfg.version} is configured: running the install script")
            else:
                rep.step(f"Ollama {have} is installed" + (" (the configured version)" if cfg.version else
                                                          "; upgrades are explicit: localaid upgrade ollama"))
            if run:
                j = job.install(cfg.version, have, pull=True)
                version, failures = j["version"], j.get("failures") or []
            else:
                models_dir_step(cfg, rep, host)
                version = configure_service(cfg, host, rep, restart=False, timeout=_ready_timeout(config),
                                            layout=layout)
                failures = pull_models(cfg, rep, config.wanted_models)
    except JobError as e:
        rep.failed(f"ollama setup failed: {e}", e.tail)
        return 1
    except SystemdError as e:
        rep.failed(f"ollama setup failed: systemd: {e}")
        return 1
    except Exception as e:  # an unforeseen failure still ends in one clear line, not a traceback
        rep.failed(f"ollama setup failed: unexpected error: {e!r}")
        if os.environ.get("LOCALAID_DEBUG"):
            raise
        return 1
    n = len(config.wanted_models)
    models = f"; {n - len(failures)}/{n} configured models present" if n else ""
    if failures:
        rep.failed(f"Ollama {version} running, but model pulls failed: " + "; ".join(failures))
        return 1
    rep.done(f"Ollama {version} " + ("installed and " if run else "") + f"running at {cfg.url}{models}")
    return 0


def upgrade_main(args, config) -> int:
    rep = Reporter(None, terminal=True)
    if os.geteuid() != 0:
        rep.failed("upgrading Ollama needs root: sudo localaid upgrade ollama")
        return 1
    target = getattr(args, "target_version", None)
    target = target[1:] if target and target[:1] in "vV" else target
    return upgrade(config, rep, Host(), target or config.ollama.version)


def upgrade(config, rep: Reporter, host: Host, target: str | None, layout: Layout = LAYOUT,
            hook: Hook | None = None) -> int:
    cfg = config.ollama
    try:
        with _lock(layout):
            job, have = _begin(config, rep, host, layout, hook)
            if have is not None and target is not None and have == target:
                version = configure_service(cfg, host, rep, restart=False, timeout=_ready_timeout(config),
                                            layout=layout)
                rep.done(f"Ollama is already {have} (running: {version}); nothing to do")
                return 0
            rep.step(f"upgrading Ollama {have or '(not installed)'} → {target or 'the newest release'}")
            version = job.install(target, have, pull=False)["version"]
    except SystemdError as e:
        rep.failed(f"upgrade failed: systemd: {e}")
        return 1
    except JobError as e:
        rep.failed(f"upgrade failed: {e}", e.tail)
        return 1
    rep.done(f"Ollama {version} installed and running at {cfg.url} (was {have or 'not installed'})")
    if cfg.version and cfg.version != version:
        rep.warn(f"ollama.version in the configuration pins {cfg.version}: set it to {version}, "
                 f"or the next `localaid provision ollama` reinstalls {cfg.version}")
    return 0
