"""The interpreter Open WebUI's venv is built with (webui.python).

    auto (default)   /usr/bin/python3 when it can run the configured Open WebUI (Debian 12's
                     3.11); else a uv-managed CPython of webui.managed_python.version (Debian 13,
                     whose only python3 is 3.13, while open-webui 0.12 needs >=3.11,<3.13).
    /a/path          that interpreter, never a download; when it cannot run Open WebUI the job
                     is "blocked": only the administrator can fix that.

The managed interpreter is downloaded by uv as the service user, in a build unit that may write
only a staging directory and uv's cache (uv checks the archive's SHA-256 against its list, or
against the list webui.managed_python.downloads_json names). Root then copies it, never through
a link, into a directory of its own that the web app cannot change, and every later install and
upgrade reuses that copy:

    /var/lib/localaid/python/
        cpython-3.11.2-linux-x86_64-gnu/     root's copy (directories 0755, no set-id bits)
        installed.json                       {"path", "version", "minor"}: what is in use

Root never runs a downloaded interpreter: its version comes from uv's directory name and is
checked by the service user, in the sandbox.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from localaid import fsutil, paths
from localaid.provision import safefs
from localaid.provision.job import JobError
from localaid.provision.webui.indexes import build_env
from localaid.provision.webui.installer import PYTHON_MAX, PYTHON_MIN, last_error, python_problem
from localaid.provision.webui.layout import SERVICE_USER, jail

SYSTEM_PYTHON = "/usr/bin/python3"
INSTALLED = "installed.json"
UV_DIR = re.compile(r"cpython-(\d+)\.(\d+)\.(\d+)-linux-[^/]+$")  # uv's name of one install


@dataclass(frozen=True)
class Interpreter:
    path: str        # what the venv is built with
    bootstrap: str   # root's own interpreter: reads the pip configuration, pip-installs uv
    managed: bool    # downloaded by uv (root never runs it)


def python_dir(ctx) -> str:
    return ctx.layout.p(os.path.join(paths.STATE_DIR, "python"))


def describe(ctx, version: str) -> tuple[bool | None, str]:
    """doctor's finding: (ok, words); ok None when only a download is missing (the set-up job
    does it)."""
    c = choose(ctx, version)
    if c.problem:
        return False, c.problem
    if not c.managed:
        return True, (f"{c.path} (webui.python)" if ctx.config.webui.python != "auto" else
                      f"{c.path} (Python {c.system})")
    system = c.system or "missing"
    if c.path:
        return True, f"{c.path} (installed by uv: the system's python3 is {system})"
    return None, (f"the system's python3 is {system}; Open WebUI {version} needs {need_text()}: the set-up job has "
                  f"uv download Python {ctx.config.webui.managed_python.version} (see its journal if it failed)")


def need_text() -> str:
    return f"Python {PYTHON_MIN[0]}.{PYTHON_MIN[1]} or {PYTHON_MAX[0]}.{PYTHON_MAX[1] - 1}"


def blocked(detail: str) -> JobError:
    """A failure only the administrator can fix: said in full in the journal and by doctor, in
    a few words in STATUS, and not retried until the configuration changes."""
    return JobError(detail, blocked=f"needs {need_text()}, see localaid doctor")


@dataclass(frozen=True)
class Choice:
    """What webui.python means on this machine now (choose()): resolve() acts on it, describe()
    says it."""
    path: str | None  # the interpreter; None: a managed one is wanted but not downloaded yet
    managed: bool = False
    problem: str | None = None  # the configured webui.python cannot run Open WebUI
    system: str = ""  # the system python3's version ("" when it does not run)


def choose(ctx, version: str) -> Choice:
    w, host = ctx.config.webui, ctx.host
    if w.python != "auto":
        return Choice(w.python, problem=python_problem(w.python, host.python_version(w.python), version))
    found = host.python_version(SYSTEM_PYTHON)
    system = ".".join(map(str, found)) if found else ""
    if python_problem(SYSTEM_PYTHON, found, version) is None:
        return Choice(SYSTEM_PYTHON, system=system)
    return Choice(managed(ctx), managed=True, system=system)


def resolve(ctx, version: str, find_uv) -> Interpreter:
    """The interpreter for Open WebUI `version`. `find_uv(python)`: uv's path, or None."""
    c = choose(ctx, version)
    if c.problem:
        raise blocked(c.problem)
    if c.path:
        return Interpreter(c.path, SYSTEM_PYTHON if c.managed else c.path, c.managed)
    system = c.system or "none that runs"
    uv = find_uv(SYSTEM_PYTHON if c.system else None)
    if uv is None:
        raise JobError(f"Open WebUI {version} needs {need_text()}; the system's python3 is {system}, and uv, which "
                       f"would download one, could not be had (pip-installing it failed: see above; or put uv on "
                       f"PATH), or set webui.python in {paths.CONFIG_FILE} to such an interpreter")
    return Interpreter(download(ctx, uv, system), SYSTEM_PYTHON, True)


def managed(ctx) -> str | None:
    """The managed interpreter in use, when it is root's and of the configured minor version."""
    doc = fsutil.read_json(os.path.join(python_dir(ctx), INSTALLED))
    if not isinstance(doc, dict) or doc.get("minor") != ctx.config.webui.managed_python.version:
        return None
    path = str(doc.get("path") or "")
    try:
        st = os.lstat(path)
    except OSError:
        return None
    top = os.path.dirname(os.path.dirname(path))
    if st.st_uid != os.geteuid() or not os.path.isfile(path) or os.path.dirname(top) != python_dir(ctx):
        return None
    return path


def uv_env(config) -> dict[str, str]:
    """What tells uv where interpreters come from (webui.managed_python) and keeps it from
    writing anywhere but the install directory."""
    m = config.webui.managed_python
    env = {"UV_PYTHON_DOWNLOADS": "manual", "UV_PYTHON_INSTALL_BIN": "0"}
    if m.mirror:
        env["UV_PYTHON_INSTALL_MIRROR"] = m.mirror
    if m.downloads_json:
        env["UV_PYTHON_DOWNLOADS_JSON_URL"] = m.downloads_json
    return env


def download(ctx, uv: str, system: str) -> str:
    """uv installs the interpreter into a staging directory (as the service user); root copies
    it to python_dir(); the path of its python3.X."""
    m, layout, host, rep = ctx.config.webui.managed_python, ctx.layout, ctx.host, ctx.rep
    staging = os.path.join(layout.cache, "python")
    uid, gid = host.ids(SERVICE_USER)
    safefs.remove_tree(staging)
    for d in (layout.cache, layout.uv_cache, staging):
        safefs.ensure_dir(d, 0o700 if d != staging else 0o755, uid, gid)
    rep.step(f"downloading Python {m.version} with uv (the system's python3 is {system})", 0.03)
    env = {**build_env(ctx.config, {}, layout.uv_cache, layout.pip_cache), **uv_env(ctx.config), "UV_PYTHON_INSTALL_DIR": staging}
    t0 = host.monotonic()
    r = host.sandboxed([uv, "python", "install", "--no-bin", m.version], jail(ctx, "python", [layout.venvs]),
                       env, ctx.config.webui.install_timeout)
    names = sorted(n for n in _listdir(staging) if UV_DIR.match(n) and not os.path.islink(os.path.join(staging, n)))
    if not r.ok or not names:
        safefs.remove_tree(staging)
        raise JobError(f"uv could not install Python {m.version}: {last_error(r.tail)} (air-gapped: set "
                       f"webui.managed_python.mirror or downloads_json, or webui.python)", r.tail)
    name = names[-1]
    major, minor, micro = (int(x) for x in UV_DIR.match(name).groups())
    if f"{major}.{minor}" != m.version:
        safefs.remove_tree(staging)
        raise JobError(f"uv installed {name}, not Python {m.version}")
    dest = os.path.join(python_dir(ctx), name)
    os.makedirs(python_dir(ctx), mode=0o755, exist_ok=True)
    tmp = dest + ".new"
    safefs.remove_tree(tmp)
    try:
        files = safefs.copy_tree(os.path.join(staging, name), tmp)
    except OSError as e:
        safefs.remove_tree(tmp)
        raise JobError(f"refusing the interpreter uv installed: {e}") from None
    finally:
        safefs.remove_tree(staging)
    os.sync()
    safefs.remove_tree(dest)
    os.rename(tmp, dest)
    path = os.path.join(dest, "bin", f"python{major}.{minor}")
    check = host.sandboxed([path, "-c", "import sys, ssl, sqlite3, ctypes; print(sys.version.split()[0])"],
                           jail(ctx, "python-check", []), {}, 120)
    if not check.ok or check.last != f"{major}.{minor}.{micro}":
        safefs.remove_tree(dest)
        raise JobError(f"the Python uv installed does not run: {last_error(check.tail)}", check.tail)
    fsutil.write_json(os.path.join(python_dir(ctx), INSTALLED),
                      {"path": path, "version": f"{major}.{minor}.{micro}", "minor": m.version,
                       "installed": time.time()}, mode=0o644)
    rep.say("Python for Open WebUI installed by uv", version=f"{major}.{minor}.{micro}", path=dest, files=files,
            seconds=f"{host.monotonic() - t0:.1f}")
    return path


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
