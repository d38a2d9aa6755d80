"""Build venvs/<version> with uv (or pip), then hand its directories to the service user.

Trust boundary: the service user may write into its venv (Open WebUI pip-installs plugin
requirements at run time), so root never executes code from a venv once it has been handed
over, and touches it afterwards only through safefs (no link followed). Root builds, reads the
version from dist-info files, gives the service user the directories (not the files: those may
be hard links into uv's cache), and writes the completion marker last.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable

from localaid import log
from localaid.provision import safefs
from localaid.provision.job import JobError
from localaid.provision.webui.installer import (
    CACHE_DIR, PIP_CACHE, UV_CACHE, UV_SUMMARY, Seed, base_env, installer_progress, last_error, pip_args,
    pip_config, python_problem, uv_args, uv_seconds)
from localaid.provision.webui.layout import (
    COMPLETE_MARKER, DISTRIBUTION, SERVICE_USER, current_version, is_complete, venv_version)
from localaid.quantity import format_size

MIN_FREE = 512 * 2**20  # below this nothing useful can be built
FIRST_INSTALL_HINT = 8 * 10**9  # 0.12.4 with CUDA torch: 6.8 GB (uv) – 7.3 GB (pip), measured


def find_uv(ctx, env: dict, seed: Seed | None = None) -> str | None:
    """uv from PATH, or from localaid's tools directory (pip-installed there once, from the same
    index). pip runs from the interpreter, or straight from ensurepip's wheel: no venv to seed."""
    found = ctx.host.which("uv")
    if found:
        return found
    tools, w = ctx.layout.tools, ctx.config.webui
    tools_uv = os.path.join(tools, "bin", "uv")
    if os.path.exists(tools_uv):
        return tools_uv
    ctx.rep.progress("running", "installing uv (the fast installer) with pip")
    safefs.remove_tree(tools)
    pip = seed.pip(w.python) if seed else None
    r = None
    if pip:
        r = ctx.host.run([*pip, "install", "--quiet", "--no-warn-script-location", "--target", tools,
                          *pip_args(ctx.config), "uv"], env=env, timeout=w.install_timeout)
    if r is None or not r.ok or not os.path.exists(tools_uv):  # no pip to run directly: a venv that has one
        safefs.remove_tree(tools)
        r = ctx.host.run([w.python, "-m", "venv", tools], env=env, timeout=300)
        if r.ok:
            r = ctx.host.run([os.path.join(tools, "bin", "python"), "-m", "pip", "install", "--quiet",
                              *pip_args(ctx.config), "uv"], env=env, timeout=w.install_timeout)
    if not r.ok or not os.path.exists(tools_uv):
        safefs.remove_tree(tools)
        log.warning("uv unavailable", detail=" | ".join(r.tail[-3:]))
        return None
    return tools_uv


def preflight(ctx, version: str) -> None:
    layout = ctx.layout
    os.makedirs(layout.venvs, mode=0o755, exist_ok=True)
    free = ctx.host.free_bytes(layout.venvs)
    cur = current_version(layout)
    need = MIN_FREE
    if cur and os.path.isdir(layout.venv(cur)):
        need = max(need, int(1.1 * safefs.tree_size(layout.venv(cur))))
    if free < need:
        raise JobError(f"not enough disk space for Open WebUI {version} in {layout.venvs}: "
                       f"{format_size(free)} free, about {format_size(need)} needed; free some space "
                       f"(old venvs: `localaid doctor` lists them) and retry")
    if cur is None and free < FIRST_INSTALL_HINT:
        ctx.rep.warn("little disk space for a first Open WebUI install", free=format_size(free),
                     typical=format_size(FIRST_INSTALL_HINT))


def phase_text(phases: dict) -> str | None:
    """ "venv=0.4 install=41.2 ..." for the journal; None when nothing was timed."""
    return " ".join(f"{k}={v:.1f}" for k, v in phases.items() if v is not None) or None


def build_venv(ctx, version: str) -> None:
    """Build venvs/<version> with uv or pip; idempotent (a complete venv is left alone).

    With uv, what does not need the venv runs beside its creation: uv's bootstrap (first install
    only) and the reading of the machine's pip configuration. The venv is made without pip and
    seeded by uv with the very wheels ensurepip would have installed (pip, and setuptools before
    3.12): the same venv, without the seconds ensurepip spends running pip to install pip."""
    layout, w, host = ctx.layout, ctx.config.webui, ctx.host
    if is_complete(layout, version):
        return
    t_check = host.monotonic()
    problem = python_problem(w.python, host.python_version(w.python), version)
    if problem:
        raise JobError(problem)
    preflight(ctx, version)
    ctx.timings["preflight"] = round(host.monotonic() - t_check, 2)
    venv = layout.venv(version)
    safefs.remove_tree(venv)  # a half-built venv from an interrupted run
    env = base_env(layout.p(UV_CACHE), layout.p(PIP_CACHE))
    for d in (CACHE_DIR, UV_CACHE, PIP_CACHE):
        os.makedirs(layout.p(d), mode=0o700, exist_ok=True)
    t0 = host.monotonic()
    phases: dict[str, float | None] = {}
    mark = [t0]

    def phase(name: str) -> None:
        now = host.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now - mark[0], 2)
        mark[0] = now

    def timed(name: str, fn, box: list) -> Callable[[], None]:
        def run():
            t = host.monotonic()
            try:
                box.append(fn())
            finally:
                phases[name] = round(host.monotonic() - t, 2)
        return run

    ctx.rep.step(f"creating the venv for Open WebUI {version}", 0.02)
    use_uv = w.installer in ("auto", "uv")
    seed = host.seed_wheels(w.python) if use_uv else Seed()
    uv_box: list = []
    conf_box: list = []
    helpers = []
    if use_uv:
        helpers = [threading.Thread(target=timed("uv_bootstrap", lambda: find_uv(ctx, env, seed), uv_box),
                                    daemon=True),
                   threading.Thread(target=timed("pip_config", lambda: pip_config(host, w.python, env,
                                                                                 seed.pip(w.python)), conf_box),
                                    daemon=True)]
        for t in helpers:
            t.start()
    try:
        make_venv(ctx, venv, env, with_pip=not seed.wheels)
        phases["venv"] = round(host.monotonic() - t0, 2)
    finally:
        for t in helpers:
            t.join()
    phase("setup")  # wall time of venv ∥ uv bootstrap ∥ pip configuration
    python = os.path.join(venv, "bin", "python")
    uv = uv_box[0] if uv_box else None
    if use_uv and uv is None and w.installer == "uv":
        safefs.remove_tree(venv)
        raise JobError("webui.installer is uv, but uv is not on PATH and could not be pip-installed; "
                       "set webui.installer: auto or pip")
    run_env = env
    if uv:
        if seed.wheels:
            r = host.run([uv, "pip", "install", "--quiet", "--python", python, "--no-index", "--no-deps",
                          *seed.wheels], env=dict(env, **link_env(ctx)), timeout=300)
            if not r.ok:
                ctx.rep.warn("cannot seed the venv with ensurepip's wheels: using ensurepip",
                             detail=" | ".join(r.tail[-3:]))
                make_venv(ctx, venv, env, with_pip=True)
            phase("seed")
        conf = conf_box[0] if conf_box and conf_box[0] is not None else pip_config(host, python, env)
        args, extra_env = uv_args(ctx.config, conf or {})
        run_env = dict(env, **extra_env, **link_env(ctx))
    elif seed.wheels:  # uv wanted but unavailable: pip installs, and the venv needs its own pip
        make_venv(ctx, venv, env, with_pip=True)
        phase("venv_pip")
    spec = f"{DISTRIBUTION}=={version}"
    tool = "uv" if uv else "pip"
    counts: dict[str, int] = {}
    last_text = [""]

    def on_line(line: str) -> None:
        m = UV_SUMMARY.match(line)
        if m:  # uv's own phase times: "Resolved 262 packages in 1.52s", "Prepared …", "Installed …"
            phases["uv_" + m.group(1).lower()] = uv_seconds(m.group(2))
            ctx.rep.say("uv: " + line.strip())
        text = installer_progress(line, counts)
        if text and text != last_text[0]:
            last_text[0] = text
            ctx.rep.progress("running", f"installing Open WebUI {version} with {tool}: {text}")

    if uv:
        argv = [uv, "pip", "install", "--python", python, *args, spec]
    else:
        argv = [python, "-m", "pip", "install", "--progress-bar", "off", *pip_args(ctx.config), spec]
    ctx.rep.step(f"installing Open WebUI {version} with {tool}", 0.05)
    ctx.rep.say("installing Open WebUI", version=version, installer=tool, venv=venv)
    r = host.run(argv, env=run_env, timeout=w.install_timeout, on_line=on_line)
    if not r.ok:
        hint = space_hint(ctx, venv)
        safefs.remove_tree(venv)
        raise JobError(f"installing {spec} with {tool} failed: {last_error(r.tail)}{hint}", r.tail)
    phase("install")
    got = venv_version(venv)
    if got != version:
        safefs.remove_tree(venv)
        raise JobError(f"the venv holds open-webui {got}, not {version}")
    phase("verify")
    uid, gid = host.ids(SERVICE_USER)
    safefs.chown_dirs(venv, uid, gid)  # from here on the venv is the service user's
    phase("chown")
    elapsed = host.monotonic() - t0
    n = counts.get("installed") or counts.get("installing") or counts.get("resolved")
    ctx.timings.update(phases)
    doc = {"version": version, "installer": tool, "python": w.python, "packages": n,
           "seconds": round(elapsed, 1), "phases": phases, "built": time.time()}
    with safefs.directory(venv) as dfd:
        safefs.write(dfd, COMPLETE_MARKER, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o644)
    ctx.rep.say("Open WebUI venv ready", version=version, packages=n, seconds=f"{elapsed:.1f}",
                phases=phase_text(phases))


def make_venv(ctx, venv: str, env: dict, with_pip: bool) -> None:
    w = ctx.config.webui
    safefs.remove_tree(venv)
    r = ctx.host.run([w.python, "-m", "venv", venv] + ([] if with_pip else ["--without-pip"]), env=env, timeout=300)
    if not r.ok:
        safefs.remove_tree(venv)
        hint = space_hint(ctx, venv)
        if any("ensurepip is not available" in t or "No module named ensurepip" in t or "No module named venv" in t
               for t in r.tail):
            hint = " (on Debian: apt install python3-venv)"
        raise JobError(f"`{w.python} -m venv {venv}` failed: {last_error(r.tail)}{hint}", r.tail)


def link_env(ctx) -> dict[str, str]:
    """uv hard-links files from its cache into the venv. Across file systems or mount points
    (a unit's CacheDirectory= bind mount did that: EXDEV) it copies every file instead — seconds
    per GB and twice the disk. Probe once per run and say so; tell uv to copy right away."""
    if "UV_LINK_MODE" in os.environ:
        return {}
    if ctx.link_ok is None:
        cache, venvs = ctx.layout.p(UV_CACHE), ctx.layout.venvs
        probe = os.path.join(cache, f".link-probe-{os.getpid()}")
        target = os.path.join(venvs, f".link-probe-{os.getpid()}")
        try:
            with open(probe, "w"):
                pass
            os.link(probe, target)
            ctx.link_ok = True
        except OSError as e:
            ctx.link_ok = False
            log.warning("uv cannot hard-link from its cache into the venvs: it copies every file (slower, "
                        "twice the disk)", cache=cache, venvs=venvs, error=e.strerror or e)
        finally:
            for f in (probe, target):
                try:
                    os.unlink(f)
                except OSError:
                    pass
    return {} if ctx.link_ok else {"UV_LINK_MODE": "copy"}


def space_hint(ctx, venv: str) -> str:
    """Python's venv module hides ensurepip's ENOSPC: look at the file system ourselves."""
    try:
        free = ctx.host.free_bytes(venv)
    except OSError:
        return ""
    if free < 64 * 2**20:
        return f" (No space left on device: {format_size(free)} free under {venv})"
    return ""
