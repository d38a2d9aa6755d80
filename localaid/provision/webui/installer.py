"""What Open WebUI's installers need to know, without touching the machine's state: the
interpreter check, ensurepip's seed wheels, installer output read for progress and errors.
`WebUIHost` adds to the seam the two interpreter probes (root runs only the configured
interpreter, never a venv's) and `sandboxed()`, which runs an installer step as the service user
in a transient unit (sandbox.py). The package indexes: indexes.py."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from localaid import paths
import localaid.provision.webui.sandbox as sandbox
from localaid.provision.host import Host, Result

PYTHON_MIN, PYTHON_MAX = (3, 11), (3, 13)  # Requires-Python: >=3.11,<3.13 (0.12.x)
TELEMETRY_OFF = {"SCARF_NO_ANALYTICS": "true", "DO_NOT_TRACK": "true", "ANONYMIZED_TELEMETRY": "false"}
UV_SUMMARY = re.compile(r"\s*(Resolved|Prepared|Installed|Uninstalled|Audited)\s+\d+\s+packages?\s+in\s+(.+?)\s*$")

# ensurepip's choice of wheels (Debian: /usr/share/python-wheels through WHEEL_PKG_DIR; other
# builds: ensurepip/_bundled), without running ensurepip: first line "pip" when `python -m pip`
# works, then one wheel per line; no wheel lines when any is missing.
SEED_PROBE = r"""
import glob, importlib.util, os, re, sys, sysconfig
print("pip" if importlib.util.find_spec("pip") else "-")
names = ["pip"] + (["setuptools"] if sys.version_info < (3, 12) else [])
spec = importlib.util.find_spec("ensurepip")
dirs = [sysconfig.get_config_var("WHEEL_PKG_DIR")]
if spec and spec.origin:
    dirs.append(os.path.join(os.path.dirname(spec.origin), "_bundled"))
def key(path):
    m = re.match(r"[^-]+-([0-9.]+)", os.path.basename(path))
    return tuple(int(x) for x in m.group(1).strip(".").split(".")) if m else ()
for d in filter(None, dirs):
    found = [sorted(glob.glob(os.path.join(d, n + "-*.whl")), key=key) for n in names]
    if all(found):
        print("\n".join(f[-1] for f in found))
        break
"""


@dataclass(frozen=True)
class Seed:
    wheels: tuple[str, ...] = ()  # ensurepip's wheels, to seed a venv made --without-pip
    has_pip: bool = False  # the interpreter itself can run `-m pip`

    @property
    def pip_wheel(self) -> str | None:
        return next((w for w in self.wheels if os.path.basename(w).startswith("pip-")), None)

    def pip(self, python: str) -> list[str] | None:
        """argv prefix running pip for `python`: its own, else straight from ensurepip's wheel
        (a wheel is importable: no venv needed to run it)."""
        if self.has_pip:
            return [python, "-m", "pip"]
        if self.pip_wheel:
            return [python, os.path.join(self.pip_wheel, "pip")]
        return None


class WebUIHost(Host):
    """The skeleton's Host plus what only Open WebUI asks of an interpreter (the configured one:
    root never runs a venv's) and the build sandbox."""

    def python_version(self, python: str) -> tuple[int, int, int] | None:
        r = self.run([python, "-c", "import sys; print('%d %d %d' % sys.version_info[:3])"], timeout=30)
        if not r.ok:
            return None
        try:
            major, minor, micro = (int(x) for x in r.last.split())
        except ValueError:
            return None
        return major, minor, micro

    def seed_wheels(self, python: str) -> Seed:
        """What `python -m venv` would seed a venv with (ensurepip's wheels: pip, and setuptools
        before 3.12), and whether `python` has a pip of its own; nothing when not found."""
        r = self.run([python, "-I", "-c", SEED_PROBE], timeout=30)
        lines = list(r.tail) if r.ok else []
        wheels = [line for line in lines[1:] if line.endswith(".whl") and os.path.isfile(line)]
        return Seed(tuple(wheels) if len(wheels) == len(lines) - 1 else (), bool(lines) and lines[0] == "pip")

    def sandboxed(self, argv: list[str], jail: sandbox.Jail, env: dict[str, str], timeout: float,
                  on_line=None) -> Result:
        """Run `argv` as jail.user in the transient unit jail.unit (sandbox.py), its output
        streamed to `on_line`. A timeout stops the unit itself, not only systemd-run."""
        self.stop_unit(jail.unit)  # a build a killed job left running: never two at once
        sandbox.write_env(jail.env_file, env)
        try:
            r = self.run(sandbox.command(jail, argv, timeout), timeout=timeout, on_line=on_line)
        finally:
            sandbox.remove_env(jail.env_file)
        if r.timed_out:
            self.stop_unit(jail.unit)
            return Result(r.rc, (*r.tail, f"(the build unit {jail.unit} was stopped)"), True)
        why = sandbox.exec_failure(r.rc, jail.unit)
        return Result(r.rc, (*r.tail, why)) if why else r

    def webui_admin(self, config, layout):
        """Open WebUI's admin API as the configured admin (adapters/webui_admin.py)."""
        from localaid.adapters.webui_admin import WebUIAdmin
        w = config.webui
        return WebUIAdmin(w.url, w.admin.email, layout.p(w.admin.password_file), timeout=30.0)

    def same_fs(self, a: str, b: str) -> bool:
        """Whether two existing paths share one file system (and so its free space)."""
        return os.stat(a).st_dev == os.stat(b).st_dev

    def stop_unit(self, unit: str) -> None:
        """Stop `unit` and wait for it to be gone (nothing when it is not loaded)."""
        self.run(["systemctl", "stop", "--quiet", unit], timeout=120)


def python_problem(python: str, found: tuple[int, int, int] | None, version: str) -> str | None:
    """None when `python` can run Open WebUI `version`, else the message (what to do included)."""
    need = f"Python {PYTHON_MIN[0]}.{PYTHON_MIN[1]} or {PYTHON_MAX[0]}.{PYTHON_MAX[1] - 1}"
    fix = (f"set webui.python in {paths.CONFIG_FILE} to such an interpreter, or to auto (localaid then has uv "
           f"download one when the system's python3 is too new), or set webui.enabled: false")
    if found is None:
        return f"webui.python {python} cannot be run (missing or broken): Open WebUI {version} needs {need}; {fix}"
    if not (PYTHON_MIN <= found[:2] < PYTHON_MAX):
        return (f"webui.python {python} is Python {'.'.join(map(str, found))}; Open WebUI {version} needs "
                f"{need}; {fix}")
    return None


def installer_progress(line: str, state: dict) -> str | None:
    """Package counts from uv's summary lines and pip's Collecting/Installing lines."""
    m = re.match(r"\s*(Resolved|Prepared|Installed|Audited|Downloaded|Built)\s+(\d+)\s+package", line)
    if m:
        state[m.group(1).lower()] = int(m.group(2))
        return f"{m.group(1).lower()} {m.group(2)} packages"
    if line.startswith("Collecting "):
        state["collected"] = state.get("collected", 0) + 1
        return f"collecting packages ({state['collected']})"
    if line.startswith("Installing collected packages:"):
        n = len(line.split(":", 1)[1].split(","))
        state["installing"] = n
        return f"installing {n} packages"
    if line.startswith("Successfully installed"):
        n = len(line.split()) - 2
        state["installed"] = n
        return f"installed {n} packages"
    return None


def uv_seconds(text: str) -> float | None:
    """uv's durations: "812ms", "1.52s", "1m 03s" → seconds."""
    total, found = 0.0, False
    for num, unit in re.findall(r"([0-9.]+)\s*(ms|s|m|h)\b", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
        found = True
    return round(total, 2) if found else None


def last_error(tail) -> str:
    """The informative part of an installer's output: the error line and its last cause."""
    lines = [t.strip() for t in tail if t.strip()]
    for t in reversed(lines):
        if "No space left on device" in t:
            return "No space left on device"
    errors = [i for i, t in enumerate(lines) if re.match(r"(error|ERROR)\b:?", t)]
    if errors:
        first = lines[errors[-1]]
        cause = lines[-1]
        return (first if cause == first else f"{first} ({cause})")[:400]
    return (lines[-1] if lines else "no output")[:400]
