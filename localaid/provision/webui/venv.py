"""Build venvs/<version> with uv (or pip) as the service user, in a sandbox of its own.

Trust boundary: code from a package index (uv itself when pip-installed, the packages, build
scripts when webui.allow_source_builds) runs only as the service user, in transient units that
may write the new venv and the installers' caches and nothing else (sandbox.py). The service
user owns its venvs (Open WebUI pip-installs plugin requirements into its own at run time), so
root never executes code from a venv and touches one only through safefs (no link followed):
it makes the empty directory for the service user, reads the version from dist-info names, and
writes the completion marker last.
"""

from __future__ import annotations

import json
import os
import threading
import time

from localaid import fsutil, log
from localaid.provision import safefs
from localaid.provision.job import JobError
import localaid.provision.webui.interpreter as interpreter
import localaid.provision.webui.sandbox as sandbox
from localaid.provision.webui.indexes import build_env, pip_config, pip_flags, uv_args
from localaid.provision.webui.installer import UV_SUMMARY, Seed, installer_progress, last_error, uv_seconds
from localaid.provision.webui.layout import (
    COMPLETE_MARKER, DISTRIBUTION, SERVICE_USER, current_version, is_complete, jail, venv_version)
from localaid.quantity import format_size

MIN_FREE = 512 * 2**20  # below this nothing useful can be built
FIRST_INSTALL_HINT = 8 * 10**9  # 0.12.4 with CUDA torch: 6.8 GB (uv) – 7.3 GB (pip), measured
# webui.torch: false. open-webui 0.12.4 does not need torch itself: sentence-transformers and
# accelerate pull it, and with it the CUDA stack (nvidia-*, triton). Measured without: chat and
# document chat through Ollama work; what runs models inside Open WebUI does not (README).
SLIM_OVERRIDES = ("# written by localaid (webui.torch: false): dependencies left out of Open WebUI's venv\n"
                  "torch; sys_platform == 'never'\n")
DB_FILES = ("webui.db", "webui.db-wal")  # what the backup copies


# ------------------------------------------------------------------------------- sandboxes
def venv_jail(ctx, version: str) -> sandbox.Jail:
    """venvs/ writable as one mount (the new venv and the caches in it: uv hard-links between
    them), every other venv in it read-only."""
    layout = ctx.layout
    others = [layout.venv(v) for v in layout.versions() if v != version]
    return jail(ctx, f"venv-{version}", [layout.venvs], others)


def find_uv(ctx, env: dict, seed: Seed | None, python: str | None) -> str | None:
    """uv from PATH, or from localaid's tools directory: pip-installed there once (by the
    service user, from the same indexes, wheels only unless allowed) with root's own
    interpreter `python` (None: none that runs). pip runs from the interpreter, or straight
    from ensurepip's wheel: no venv to seed."""
    host, w, tools = ctx.host, ctx.config.webui, ctx.layout.tools
    found = host.which("uv")
    if found:
        return found
    tools_uv = os.path.join(tools, "bin", "uv")
    if os.path.lexists(tools_uv):
        return tools_uv
    if python is None:
        return None
    ctx.rep.progress("running", "installing uv (the fast installer) with pip")
    uid, gid = host.ids(SERVICE_USER)
    for d in (ctx.layout.cache, ctx.layout.pip_cache):  # the unit's writable paths must exist
        safefs.ensure_dir(d, 0o700, uid, gid)
    j = jail(ctx, "uv", [tools, ctx.layout.pip_cache])

    def fresh() -> None:
        safefs.remove_tree(tools)
        safefs.ensure_dir(tools, 0o755, uid, gid)
    fresh()
    pip = seed.pip(python) if seed else None
    r = None
    if pip:
        r = host.sandboxed([*pip, "install", "--quiet", "--no-warn-script-location", "--target", tools,
                            *pip_flags(ctx.config), "uv"], j, env, w.install_timeout)
    if r is None or not r.ok or not os.path.lexists(tools_uv):  # no pip to run directly: a venv that has one
        fresh()
        r = host.sandboxed([python, "-m", "venv", tools], j, env, 300)
        if r.ok:
            r = host.sandboxed([os.path.join(tools, "bin", "python"), "-m", "pip", "install", "--quiet",
                                *pip_flags(ctx.config), "uv"], j, env, w.install_timeout)
    if not r.ok or not os.path.lexists(tools_uv):
        safefs.remove_tree(tools)
        log.warning("uv unavailable", detail=" | ".join(r.tail[-3:]))
        return None
    return tools_uv


# ------------------------------------------------------------------------------- disk space
def db_size(ctx) -> int:
    """What the backup of webui.db (and a WAL beside it) takes."""
    try:
        with safefs.directory(ctx.data_dir()) as dfd:
            return sum(safefs.size(dfd, name) or 0 for name in DB_FILES)
    except OSError:
        return 0


def prune_caches(ctx) -> int:
    """Empty the installers' caches (what `uv cache clean` and `pip cache purge` do) and the
    caches of earlier releases; the bytes that freed."""
    layout, host = ctx.layout, ctx.host
    before = host.free_bytes(layout.venvs)
    for d in (layout.uv_cache, layout.pip_cache, layout.legacy_cache):
        safefs.remove_tree(d)
    return max(0, host.free_bytes(layout.venvs) - before)


def preflight(ctx, version: str) -> None:
    """Room for the new venv (as big as the current one, or MIN_FREE) and for the database's
    backup; when short, the installers' caches go first (and the job says so)."""
    layout, host = ctx.layout, ctx.host
    os.makedirs(layout.venvs, mode=0o755, exist_ok=True)
    os.makedirs(layout.backups, mode=0o700, exist_ok=True)
    cur = current_version(layout)
    need = MIN_FREE
    if cur and os.path.isdir(layout.venv(cur)):
        need = max(need, int(1.1 * safefs.tree_size(layout.venv(cur))))
    db = db_size(ctx)
    one_fs = host.same_fs(layout.venvs, layout.backups)

    def shortage() -> str | None:
        free, free_b = host.free_bytes(layout.venvs), host.free_bytes(layout.backups)
        if one_fs and free < need + db:
            return (f"{format_size(free)} free in {layout.venvs}, about {format_size(need)} needed for the venv"
                    + (f" and {format_size(db)} for the backup of webui.db" if db else ""))
        if not one_fs and free < need:
            return f"{format_size(free)} free in {layout.venvs}, about {format_size(need)} needed for the venv"
        if not one_fs and free_b < db:
            return (f"{format_size(free_b)} free in {layout.backups}, {format_size(db)} needed for the backup "
                    f"of webui.db")
        return None

    short = shortage()
    if short:
        freed = prune_caches(ctx)
        ctx.rep.warn(f"little disk space ({short}): emptied the installers' caches (uv cache clean, pip cache "
                     f"purge), freed {format_size(freed)}", cache=layout.cache)
        short = shortage()
    if short:
        raise JobError(f"not enough disk space for Open WebUI {version}: {short}; free some space "
                       f"(old venvs: `localaid doctor` lists them) and retry")
    if cur is None and host.free_bytes(layout.venvs) < FIRST_INSTALL_HINT:
        ctx.rep.warn("little disk space for a first Open WebUI install",
                     free=format_size(host.free_bytes(layout.venvs)), typical=format_size(FIRST_INSTALL_HINT))


def phase_text(phases: dict) -> str | None:
    """ "venv=0.4 install=41.2 ..." for the journal; None when nothing was timed."""
    return " ".join(f"{k}={v:.1f}" for k, v in phases.items() if v is not None) or None


# ------------------------------------------------------------------------------------ build
def build_venv(ctx, version: str) -> None:
    """Build venvs/<version> with uv or pip; idempotent (a complete venv is left alone).

    With uv, what does not need the venv runs beside its creation: reading the machine's pip
    configuration, then uv's bootstrap (first install only). The venv is made without pip and
    seeded by uv with the very wheels ensurepip would have installed (pip, and setuptools before
    3.12): the same venv, without the seconds ensurepip spends running pip to install pip."""
    if is_complete(ctx.layout, version):
        return
    interp = _interpreter(ctx, version)
    venv = ctx.layout.venv(version)
    _clear(ctx, venv)
    clock = _Clock(ctx.host)
    ctx.rep.step(f"creating the venv for Open WebUI {version}", 0.02)
    uv, conf, seed = _create(ctx, venv, interp, clock)
    env = _env(ctx, conf)
    if uv is None and ctx.config.webui.installer == "uv":
        safefs.remove_tree(venv)
        raise JobError("webui.installer is uv, but uv is not on PATH and could not be pip-installed; "
                       "set webui.installer: auto or pip")
    _seed(ctx, version, venv, interp, uv, seed, env, clock)
    counts = _install(ctx, version, venv, uv, conf, env, clock)
    _complete(ctx, version, venv, interp, uv, counts, clock)


class _Clock:
    """The build's phase times ("venv=0.4 install=41.2 ..."): `phase` adds the time since the
    last mark (the start first) to a phase, `timed` times one call."""

    def __init__(self, host) -> None:
        self.host = host
        self.t0 = self.mark = host.monotonic()
        self.phases: dict[str, float | None] = {}

    def phase(self, name: str) -> None:
        now = self.host.monotonic()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self.mark, 2)
        self.mark = now

    def timed(self, name: str, fn) -> object:
        t = self.host.monotonic()
        try:
            return fn()
        finally:
            self.phases[name] = round(self.host.monotonic() - t, 2)


def _interpreter(ctx, version: str) -> interpreter.Interpreter:
    """The interpreter for the venv (uv may download one), then the room on disk; timed as
    "preflight"."""
    host = ctx.host
    t_check = host.monotonic()

    def uv_for(python: str | None) -> str | None:  # uv before any venv: to download an interpreter
        seed = host.seed_wheels(python) if python else None
        return find_uv(ctx, _env(ctx, pip_config(host, python, seed.pip(python)) if python else {}), seed, python)
    interp = interpreter.resolve(ctx, version, uv_for)
    preflight(ctx, version)
    ctx.timings["preflight"] = round(host.monotonic() - t_check, 2)
    return interp


def _clear(ctx, venv: str) -> None:
    """No half-built venv from an interrupted run, no caches of an earlier release; the caches'
    directories for the service user."""
    layout = ctx.layout
    uid, gid = ctx.host.ids(SERVICE_USER)
    safefs.remove_tree(venv)
    if os.path.isdir(layout.legacy_cache):
        safefs.remove_tree(layout.legacy_cache)
        ctx.rep.say("removed the installer caches of an earlier release", path=layout.legacy_cache)
    for d in (layout.cache, layout.uv_cache, layout.pip_cache):
        safefs.ensure_dir(d, 0o700, uid, gid)


def _create(ctx, venv: str, interp, clock: _Clock):
    """The venv (without pip when ensurepip's wheels will seed it), while a thread reads the pip
    configuration and, for uv, finds or bootstraps it. (uv or None, pip configuration, seed)."""
    host, use_uv = ctx.host, ctx.config.webui.installer in ("auto", "uv")
    boot = interp.bootstrap
    boot_seed = host.seed_wheels(boot) if use_uv or interp.managed else Seed()
    # ensurepip's wheels of root's interpreter seed the venv (pip is pure Python: Debian 13's
    # wheel serves a managed 3.11 too)
    seed = boot_seed if use_uv else Seed()
    box: dict = {}

    def helper() -> None:  # the pip configuration (root's, by the system's pip), then uv
        box["conf"] = clock.timed("pip_config", lambda: pip_config(host, boot, boot_seed.pip(boot)))
        if use_uv:
            box["uv"] = clock.timed("uv_bootstrap", lambda: find_uv(ctx, _env(ctx, box["conf"]), boot_seed, boot))
    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    try:
        make_venv(ctx, venv, _env(ctx, {}), with_pip=not seed.wheels, python=interp.path)
        clock.phases["venv"] = round(host.monotonic() - clock.t0, 2)
    finally:
        thread.join()
    clock.phase("setup")  # wall time of venv ∥ pip configuration + uv bootstrap
    return box.get("uv"), box.get("conf") or {}, seed


def _seed(ctx, version: str, venv: str, interp, uv, seed: Seed, env: dict, clock: _Clock) -> None:
    """pip (and setuptools) into a venv made without: uv installs ensurepip's wheels (ensurepip
    when that fails); without uv, the venv is made anew with its own pip."""
    if uv and seed.wheels:
        python = os.path.join(venv, "bin", "python")
        r = ctx.host.sandboxed([uv, "pip", "install", "--quiet", "--python", python, "--no-index", "--no-deps",
                                *seed.wheels], venv_jail(ctx, version), env, 300)
        if not r.ok:
            ctx.rep.warn("cannot seed the venv with ensurepip's wheels: using ensurepip",
                         detail=" | ".join(r.tail[-3:]))
            make_venv(ctx, venv, env, with_pip=True, python=interp.path)
        clock.phase("seed")
    elif seed.wheels:  # uv wanted but unavailable: pip installs, and the venv needs its own pip
        make_venv(ctx, venv, env, with_pip=True, python=interp.path)
        clock.phase("venv_pip")


def _install(ctx, version: str, venv: str, uv, conf: dict, env: dict, clock: _Clock) -> dict[str, int]:
    """Open WebUI `version` into the venv as the service user, its progress reported line by line;
    a failure removes the venv. The installer's package counts."""
    w, spec, tool = ctx.config.webui, f"{DISTRIBUTION}=={version}", "uv" if uv else "pip"
    counts: dict[str, int] = {}
    last_text = [""]

    def on_line(line: str) -> None:
        m = UV_SUMMARY.match(line)
        if m:  # uv's own phase times: "Resolved 262 packages in 1.52s", "Prepared …", "Installed …"
            clock.phases["uv_" + m.group(1).lower()] = uv_seconds(m.group(2))
            ctx.rep.say("uv: " + line.strip())
        text = installer_progress(line, counts)
        if text and text != last_text[0]:
            last_text[0] = text
            ctx.rep.progress("running", f"installing Open WebUI {version} with {tool}: {text}")

    argv = _install_argv(ctx, version, os.path.join(venv, "bin", "python"), uv, conf, spec)
    ctx.rep.step(f"installing Open WebUI {version} with {tool}", 0.05)
    ctx.rep.say("installing Open WebUI", version=version, installer=tool, venv=venv, user=SERVICE_USER,
                wheels_only=not w.allow_source_builds)
    r = ctx.host.sandboxed(argv, venv_jail(ctx, version), env, w.install_timeout, on_line)
    if not r.ok:
        hint = space_hint(ctx, venv)
        safefs.remove_tree(venv)
        raise JobError(f"installing {spec} with {tool} failed: {last_error(r.tail)}{hint}", r.tail)
    clock.phase("install")
    return counts


def _install_argv(ctx, version: str, python: str, uv, conf: dict, spec: str) -> list[str]:
    """The installer's command line: uv (torch left out unless webui.torch) or pip, the indexes'
    flags, wheels only unless allowed."""
    if uv:
        # An upgrade compiles the byte code while the old version still serves (measured: the new
        # version's first start 8.6 s instead of 13 s, the outage 8 s). A first install does not:
        # compiling every module takes longer (22 s vs 7 s) than the start compiling what it
        # imports, and nothing is serving meanwhile. pip compiles anyway.
        compile_ = ["--compile-bytecode"] if current_version(ctx.layout) not in (None, version) else []
        return [uv, "pip", "install", "--python", python, *compile_, *uv_args(ctx.config, conf)[0],
                *slim(ctx), spec]
    return [python, "-m", "pip", "install", "--progress-bar", "off", *pip_flags(ctx.config), spec]


def _complete(ctx, version: str, venv: str, interp, uv, counts: dict[str, int], clock: _Clock) -> None:
    """The venv holds `version` (else it goes): the completion marker, with what was built how and
    the phases' times, written last."""
    got = venv_version(venv)
    if got != version:
        safefs.remove_tree(venv)
        raise JobError(f"the venv holds open-webui {got}, not {version}")
    clock.phase("verify")
    elapsed = ctx.host.monotonic() - clock.t0
    n = counts.get("installed") or counts.get("installing") or counts.get("resolved")
    w, phases = ctx.config.webui, clock.phases
    ctx.timings.update(phases)
    doc = {"version": version, "installer": "uv" if uv else "pip", "python": interp.path,
           "managed_python": interp.managed, "torch": bool(w.torch or not uv), "packages": n,
           "user": SERVICE_USER, "wheels_only": not w.allow_source_builds, "seconds": round(elapsed, 1),
           "phases": phases, "built": time.time()}
    with safefs.directory(venv) as dfd:
        safefs.write(dfd, COMPLETE_MARKER, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o644)
    ctx.rep.say("Open WebUI venv ready", version=version, packages=n, seconds=f"{elapsed:.1f}",
                phases=phase_text(phases))


def slim(ctx) -> list[str]:
    """uv's arguments leaving torch out (webui.torch: false): an override file of root's."""
    if ctx.config.webui.torch:
        return []
    fsutil.atomic_write(ctx.layout.overrides, SLIM_OVERRIDES, mode=0o644)
    return ["--override", ctx.layout.overrides]


def _env(ctx, conf: dict) -> dict[str, str]:
    return build_env(ctx.config, conf, ctx.layout.uv_cache, ctx.layout.pip_cache)


def make_venv(ctx, venv: str, env: dict, with_pip: bool, python: str) -> None:
    """An empty directory for the service user, made into a venv by it with `python`."""
    host = ctx.host
    uid, gid = host.ids(SERVICE_USER)
    safefs.remove_tree(venv)
    safefs.ensure_dir(venv, 0o755, uid, gid)
    version = os.path.basename(venv)
    r = host.sandboxed([python, "-m", "venv", venv] + ([] if with_pip else ["--without-pip"]),
                       venv_jail(ctx, version), env, 300)
    if not r.ok:
        safefs.remove_tree(venv)
        hint = space_hint(ctx, venv)
        if any("ensurepip is not available" in t or "No module named ensurepip" in t or "No module named venv" in t
               for t in r.tail):
            hint = " (on Debian: apt install python3-venv)"
        raise JobError(f"`{python} -m venv {venv}` failed: {last_error(r.tail)}{hint}", r.tail)


def space_hint(ctx, venv: str) -> str:
    """Python's venv module hides ensurepip's ENOSPC: look at the file system ourselves."""
    for path in (venv, os.path.dirname(venv)):  # the venv may be gone (or a mount point)
        try:
            free = ctx.host.free_bytes(path)
            break
        except OSError:
            continue
    else:
        return ""
    if free < 64 * 2**20:
        return f" (No space left on device: {format_size(free)} free under {venv})"
    return ""
