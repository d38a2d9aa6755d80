"""Open WebUI: a pip/uv-built venv per version, a hardened unit, atomic upgrades with rollback.

Runs as root in short-lived units (localaid-webui-setup.service → ``localaid provision webui``)
or from the command line (``localaid upgrade webui [--version V]``). Layout, all owned by
localaid::

    /var/lib/localaid/webui/
        venvs/<version>/          one venv per version; ``.localaid-complete`` is written last
        current -> venvs/<v>      switched atomically (rename of a new symlink over the old)
        backups/webui-<v>-<utc>.db   webui.db copies taken before a version first starts
        secret-key                WEBUI_SECRET_KEY, generated once (0600, the service user's)
        upgrade.json              the journal of an upgrade under way (step by step)
        installed.json            version installed and the configured pin it answered
        tools/                    a venv holding uv when none is on PATH
    /etc/localaid/open-webui.env  EnvironmentFile of open-webui.service (0600 root)
    /etc/systemd/system/open-webui.service.d/50-localaid.conf   data dir, GPU access
    /run/localaid/maintenance/open-webui   PID of an upgrade at work: the supervisor keeps off

Trust boundary: the service user may write into its venv (Open WebUI pip-installs plugin
requirements at run time), so root never executes code from a venv once it has been handed
over. Root builds a venv, then gives the service user its directories (not its files: those
may be hard links into uv's cache); versions are read from dist-info files, never by running
the venv's interpreter.

Crash safety: every step of an upgrade is recorded in upgrade.json before it is taken, each
step is idempotent, and the next run (provision or upgrade) resumes the journal: forwards to a
healthy new version, or back to the old venv with webui.db restored byte for byte.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from localaid import fsutil, log, paths, progress

JOB = "webui-setup"
UNIT = "open-webui.service"
SETUP_UNIT = "localaid-webui-setup.service"
SERVICE_USER = "open-webui"
DISTRIBUTION = "open-webui"
PYTHON_MIN, PYTHON_MAX = (3, 11), (3, 13)  # Requires-Python: >=3.11,<3.13 (0.12.x)
COMPLETE_MARKER = ".localaid-complete"
ENV_FILE = "/etc/localaid/open-webui.env"
DROPIN_DIR = "/etc/systemd/system/open-webui.service.d"
DROPIN = DROPIN_DIR + "/50-localaid.conf"
UNIT_DATA_DIR = "/var/lib/open-webui"  # the default the shipped unit names
CACHE_DIR = "/var/cache/localaid"  # created here (0700), not by the unit's CacheDirectory=: see _link_env
UV_CACHE = CACHE_DIR + "/uv"
PIP_CACHE = CACHE_DIR + "/pip"
MIN_FREE = 512 * 2**20  # below this nothing useful can be built
FIRST_INSTALL_HINT = 8 * 10**9  # 0.12.4 with CUDA torch: 6.8 GB (uv) – 7.3 GB (pip), measured
TELEMETRY_OFF = {"SCARF_NO_ANALYTICS": "true", "DO_NOT_TRACK": "true", "ANONYMIZED_TELEMETRY": "false"}
STEPS = ("build", "stop", "backup", "switch", "start", "rollback")


class WebUIError(Exception):
    """A failure with a message fit for STATUS and the journal (and the installer's last lines)."""

    def __init__(self, message: str, tail=()):
        super().__init__(message)
        self.tail = list(tail)[-10:]


# ------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """Every path this module touches; `root` prefixes them all (tests use a temporary root)."""
    root: str = ""
    state_dir: str = paths.STATE_DIR
    run_dir: str = paths.RUN_DIR

    def p(self, path: str) -> str:
        return self.root + path

    @property
    def base(self) -> str:
        return self.p(os.path.join(self.state_dir, "webui"))

    @property
    def venvs(self) -> str:
        return os.path.join(self.base, "venvs")

    def venv(self, version: str) -> str:
        return os.path.join(self.venvs, version)

    @property
    def current(self) -> str:
        return os.path.join(self.base, "current")

    @property
    def backups(self) -> str:
        return os.path.join(self.base, "backups")

    @property
    def tools(self) -> str:
        return os.path.join(self.base, "tools")

    @property
    def journal(self) -> str:
        return os.path.join(self.base, "upgrade.json")

    @property
    def installed(self) -> str:
        return os.path.join(self.base, "installed.json")

    @property
    def enabled_marker(self) -> str:
        return os.path.join(self.base, "enabled-by-localaid")

    @property
    def secret(self) -> str:
        return os.path.join(self.base, "secret-key")

    @property
    def lock(self) -> str:
        return os.path.join(self.base, ".lock")

    @property
    def env_file(self) -> str:
        return self.p(ENV_FILE)

    @property
    def dropin(self) -> str:
        return self.p(DROPIN)

    @property
    def maintenance(self) -> str:
        return self.p(os.path.join(self.run_dir, "maintenance", "open-webui"))


# -------------------------------------------------------------------------------------- host
class Host:
    """The machine: users, ownership, processes, systemd, HTTP. Tests substitute a fake."""

    def __init__(self):
        self._sd = None

    @property
    def sd(self):
        if self._sd is None:
            from localaid.adapters.systemd import Systemd
            self._sd = Systemd(timeout=30)
        return self._sd

    # ---- users and files
    def ensure_user(self, name: str, home: str) -> None:
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            pass
        nologin = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        for attempt in range(10):  # Ollama's install script may be adding its user at the same time
            r = subprocess.run(["useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
                                "--shell", nologin, "--comment", "Open WebUI (localaid)", name],
                               capture_output=True, text=True)
            if r.returncode == 0 or "lock" not in r.stderr.lower():
                break
            time.sleep(0.5)
        if r.returncode != 0:
            raise WebUIError(f"cannot create system user {name}: {r.stderr.strip()}")

    def ids(self, name: str) -> tuple[int, int]:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid

    def chown(self, path: str, user: str | None) -> None:
        uid, gid = self.ids(user) if user else (0, 0)
        os.chown(path, uid, gid, follow_symlinks=False)

    def free_bytes(self, path: str) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    # ---- processes
    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600,
            on_line: Callable[[str], None] | None = None, cwd: str | None = None) -> tuple[int, list[str]]:
        """Run argv with stdout+stderr merged, line by line; (exit status, last 40 lines).

        A timeout kills the whole process group (uv and pip spawn helpers) and returns 124."""
        tail: list[str] = []
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True, text=True, errors="replace")
        except OSError as e:
            return 127, [f"{argv[0]}: {e.strerror or e}"]
        expired = threading.Event()

        def kill():
            expired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                del tail[:-40]
                if on_line:
                    on_line(line)
            rc = proc.wait()
        finally:
            timer.cancel()
        if expired.is_set():
            tail.append(f"(killed after {timeout:.0f} s: webui.install_timeout)")
            return 124, tail
        return rc, tail

    def python_version(self, python: str) -> tuple[int, int, int] | None:
        try:
            r = subprocess.run([python, "-c", "import sys; print('%d %d %d' % sys.version_info[:3])"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        try:
            major, minor, micro = (int(x) for x in r.stdout.split())
        except ValueError:
            return None
        return major, minor, micro

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def seed_wheels(self, python: str) -> "Seed":
        """What `python -m venv` would seed a venv with (ensurepip's wheels: pip, and setuptools
        before 3.12), and whether `python` has a pip of its own; nothing when not found."""
        try:
            r = subprocess.run([python, "-I", "-c", SEED_PROBE], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return Seed()
        lines = r.stdout.splitlines() if r.returncode == 0 else []
        wheels = [line for line in lines[1:] if line.endswith(".whl") and os.path.isfile(line)]
        return Seed(tuple(wheels) if len(wheels) == len(lines) - 1 else (), bool(lines) and lines[0] == "pip")

    # ---- systemd
    def daemon_reload(self) -> None:
        self.sd.daemon_reload()

    def enable(self, unit: str) -> None:
        self.sd.enable(unit)

    def disable(self, unit: str) -> None:
        subprocess.run(["systemctl", "disable", "--quiet", unit], capture_output=True, text=True)

    def unit_state(self, unit: str):
        return self.sd.state(unit)

    def start(self, unit: str) -> None:
        if self.unit_state(unit).active_state == "failed":
            self.sd.reset_failed(unit)  # a crash-looped unit hit its start limit: a fresh start
        self.sd.start(unit)

    def restart(self, unit: str) -> None:
        self.sd.restart(unit)

    def stop(self, unit: str, timeout: float = 90) -> None:
        self.sd.stop(unit)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.unit_state(unit)
            if st.active_state in ("inactive", "failed") and not st.job:
                return
            time.sleep(0.2)
        raise WebUIError(f"{unit} did not stop within {timeout:.0f} s")

    def get(self, url: str, timeout: float = 2.0) -> tuple[int | None, object | None]:
        from localaid.adapters import http
        probe, body = http.request(url, timeout)
        return probe.status, body

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


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


# --------------------------------------------------------------------------- small helpers
def say(msg: str, **fields: object) -> None:
    """A journal line when run by a unit; a plain line on a terminal (`localaid upgrade webui`)."""
    if sys.stdout.isatty():
        print(msg + "".join(f" {k}={v}" for k, v in fields.items() if v is not None), flush=True)
    else:
        log.info(msg, **fields)


def python_problem(python: str, found: tuple[int, int, int] | None, version: str) -> str | None:
    """None when `python` can run Open WebUI `version`, else the message (what to do included)."""
    need = f"Python {PYTHON_MIN[0]}.{PYTHON_MIN[1]} or {PYTHON_MAX[0]}.{PYTHON_MAX[1] - 1}"
    fix = (f"install one (Debian 12's python3 is 3.11; on Debian 13, whose python3 is 3.13, install a 3.12 "
           f"build, e.g. `uv python install 3.12` or a python3.12 package) and set webui.python in "
           f"{paths.CONFIG_FILE} to its path, or set webui.enabled: false")
    if found is None:
        return f"webui.python {python} cannot be run (missing or broken): Open WebUI {version} needs {need}; {fix}"
    if not (PYTHON_MIN <= found[:2] < PYTHON_MAX):
        return (f"webui.python {python} is Python {'.'.join(map(str, found))}; Open WebUI {version} needs "
                f"{need}; {fix}")
    return None


def env_quote(value: str) -> str:
    """A value for a systemd EnvironmentFile= line, read back exactly as written."""
    if re.fullmatch(r"[A-Za-z0-9_.,:/@+%=-]*", value):
        return value
    return '"' + re.sub(r'([\\"`$])', r"\\\1", value).replace("\n", "\\n") + '"'


def render_env(config, secret_key: str, admin_password: str | None) -> str:
    """The EnvironmentFile of open-webui.service (root-only: it holds the key and the password)."""
    w = config.webui
    env: dict[str, str] = {
        "DATA_DIR": w.data_dir,
        "HOST": w.host,
        "PORT": str(w.port),
        "OLLAMA_BASE_URL": config.ollama.url,
        "WEBUI_SECRET_KEY": secret_key,
        "WEBUI_ADMIN_EMAIL": w.admin.email,
        "WEBUI_ADMIN_NAME": w.admin.name,
    }
    if admin_password:
        env["WEBUI_ADMIN_PASSWORD"] = admin_password
    # No calls home, no model downloads from Hugging Face at start (measured: /health in 18 s
    # rather than waiting on an unreachable hub); override in webui.environment.
    env.update(TELEMETRY_OFF)
    env.update({"OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1"})
    # Plugin requirements are pip-installed by the service user into its own venv: no cache
    # outside its home (the data dir).
    env["PIP_CACHE_DIR"] = os.path.join(w.data_dir, ".cache", "pip")
    env.update(dict(w.environment))
    lines = ["# Written by `localaid provision webui` from the localaid configuration; edits are overwritten.",
             "# Change webui.* in /etc/localaid/localaid.yaml instead (extra variables: webui.environment)."]
    lines += [f"{k}={env_quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def render_dropin(config, gpu_groups: list[str]) -> str:
    """Machine-specific settings of open-webui.service; empty when the shipped unit fits."""
    w = config.webui
    out = []
    if w.data_dir != UNIT_DATA_DIR:
        out += [f"WorkingDirectory={w.data_dir}", f"ReadWritePaths={w.data_dir}"]
    if w.gpu:
        out += ["# webui.gpu: true: CUDA for local embedding/speech models",
                "PrivateDevices=no", "DevicePolicy=closed", "DeviceAllow=char-nvidia* rw"]
        if gpu_groups:
            out.append("SupplementaryGroups=" + " ".join(gpu_groups))
    if not out:
        return ""
    return "# Written by `localaid provision webui`; edits are overwritten.\n[Service]\n" + "\n".join(out) + "\n"


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


def pip_config(host: Host, python: str, env: dict, pip: list[str] | None = None) -> dict[str, str] | None:
    """The machine's pip configuration as pip itself reads it (files and PIP_* variables);
    None when `python` has no pip (`pip`: another way to run one, see Seed.pip)."""
    rc, lines = host.run([*(pip or [python, "-m", "pip"]), "config", "list"], env=env, timeout=60)
    out: dict[str, str] = {}
    if rc != 0:
        return None
    for line in lines:
        m = re.match(r"([^=]*)\.([a-z0-9-]+)=(.*)$", line.strip())
        if not m:
            continue
        value = m.group(3).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m.group(2)] = value  # pip lists files (global, user, site) then PIP_*: later wins
    return out


def _split(value: str) -> list[str]:
    return [v for v in re.split(r"\s+", value.strip()) if v]


def uv_args(config, pipconf: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv does not read pip's configuration: translate it (localaid's own keys win)."""
    w = config.webui
    args: list[str] = []
    env: dict[str, str] = {}
    no_index = bool(getattr(w, "no_index", False)) or pipconf.get("no-index", "").lower() in ("1", "true", "yes", "on")
    if no_index:
        args.append("--no-index")
    else:
        index = w.index_url or pipconf.get("index-url")
        if index:
            args += ["--index-url", index]
        for url in (w.extra_index_urls or _split(pipconf.get("extra-index-url", ""))):
            if url.startswith("file://") and not os.path.isdir(url[7:]):
                continue  # pip ignores a missing local index with a warning; uv would fail
            args += ["--extra-index-url", url]
        if "--extra-index-url" in args:
            # pip picks the best version across all indexes; uv by default only looks at the
            # first index that has a package (measured: no solution with a partial mirror first).
            args += ["--index-strategy", "unsafe-best-match"]
    for link in (w.find_links or _split(pipconf.get("find-links", ""))):
        if link.startswith("/") and not os.path.exists(link):
            continue
        args += ["--find-links", link]
    for c in _split(pipconf.get("constraint", "")):
        if os.path.exists(c):
            args += ["--constraint", c]
    for h in _split(pipconf.get("trusted-host", "")):
        args += ["--allow-insecure-host", h]
    cert = pipconf.get("cert") or os.environ.get("SSL_CERT_FILE")
    if not cert and os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        cert = "/etc/ssl/certs/ca-certificates.crt"
    if cert:
        env["SSL_CERT_FILE"] = cert  # uv trusts its bundled roots otherwise (private CAs fail)
    timeout = pipconf.get("timeout") or pipconf.get("default-timeout")
    if timeout:
        env["UV_HTTP_TIMEOUT"] = timeout
    if pipconf.get("proxy"):
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = pipconf["proxy"]
    return args, env


def pip_args(config) -> list[str]:
    """Options for pip: only localaid's own keys; pip reads the machine's configuration itself."""
    w = config.webui
    args: list[str] = []
    if getattr(w, "no_index", False):
        args.append("--no-index")
    if w.index_url:
        args += ["--index-url", w.index_url]
    for url in w.extra_index_urls:
        args += ["--extra-index-url", url]
    for link in w.find_links:
        args += ["--find-links", link]
    return args


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_durably(src: str, dst: str) -> None:
    """Copy src to dst atomically (temporary file in dst's directory, fsync, rename)."""
    tmp = os.path.join(os.path.dirname(dst), "." + os.path.basename(dst) + ".tmp")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())
    shutil.copymode(src, tmp)
    os.replace(tmp, dst)
    dfd = os.open(os.path.dirname(dst) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def venv_version(venv: str) -> str | None:
    """The open-webui version installed in `venv`, read from its dist-info (nothing executed)."""
    lib = os.path.join(venv, "lib")
    try:
        pythons = [d for d in os.listdir(lib) if d.startswith("python")]
    except OSError:
        return None
    for py in pythons:
        site = os.path.join(lib, py, "site-packages")
        try:
            names = os.listdir(site)
        except OSError:
            continue
        for name in names:
            if name.lower().startswith("open_webui-") and name.endswith(".dist-info"):
                return name[len("open_webui-"):-len(".dist-info")]
    return None


# ------------------------------------------------------------------------------------- state
@dataclass
class Ctx:
    config: object
    layout: Layout = field(default_factory=Layout)
    host: Host = field(default_factory=Host)
    job: str = JOB
    timings: dict = field(default_factory=dict)  # phase -> seconds, for the journal and bench/webui.py
    link_ok: bool | None = None  # uv can hard-link from its cache into the venvs (probed once)

    def report(self, state: str, text: str, fraction: float | None = None, detail=()) -> None:
        try:
            progress.report(self.job, state, text, fraction, detail)
        except OSError as e:  # progress is a courtesy: never fail the work for it
            log.warning("cannot write progress", error=e)


def read_journal(layout: Layout) -> dict | None:
    j = fsutil.read_json(layout.journal)
    return j if isinstance(j, dict) and j.get("step") in STEPS else None


def write_journal(layout: Layout, j: dict) -> None:
    fsutil.write_json(layout.journal, j, mode=0o600)


def current_version(layout: Layout) -> str | None:
    try:
        target = os.readlink(layout.current)
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def is_complete(layout: Layout, version: str) -> bool:
    return os.path.isfile(os.path.join(layout.venv(version), COMPLETE_MARKER))


def wanted_version(config, layout: Layout) -> str:
    """The configured pin, unless `localaid upgrade webui --version V` chose V since it was set."""
    inst = fsutil.read_json(layout.installed)
    if isinstance(inst, dict) and inst.get("config_version") == config.webui.version and inst.get("version"):
        return str(inst["version"])
    return config.webui.version


def switch_current(layout: Layout, version: str | None) -> None:
    """Point `current` at venvs/<version> (None: remove it) with one rename."""
    if version is None:
        try:
            os.unlink(layout.current)
        except FileNotFoundError:
            pass
        return
    tmp = layout.current + ".new"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(os.path.join("venvs", version), tmp)
    os.replace(tmp, layout.current)


# ------------------------------------------------------------------------------------- build
def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env.setdefault("PIP_CACHE_DIR", PIP_CACHE)
    env.setdefault("UV_CACHE_DIR", UV_CACHE)
    env["UV_NO_PROGRESS"] = "1"
    return env


def find_uv(ctx: Ctx, env: dict, seed: Seed | None = None) -> str | None:
    """uv from PATH, or from localaid's tools directory (pip-installed there once, from the same
    index). pip runs from the interpreter, or straight from ensurepip's wheel: no venv to seed."""
    found = ctx.host.which("uv")
    if found:
        return found
    tools_uv = os.path.join(ctx.layout.tools, "bin", "uv")
    if os.path.exists(tools_uv):
        return tools_uv
    python = ctx.config.webui.python
    ctx.report("running", "installing uv (the fast installer) with pip")
    shutil.rmtree(ctx.layout.tools, ignore_errors=True)
    pip = seed.pip(python) if seed else None
    rc, tail = 1, []
    if pip:
        rc, tail = ctx.host.run([*pip, "install", "--quiet", "--no-warn-script-location", "--target",
                                 ctx.layout.tools, *pip_args(ctx.config), "uv"], env=env,
                                timeout=ctx.config.webui.install_timeout)
    if rc != 0 or not os.path.exists(tools_uv):  # no pip to run directly: a venv that has one
        shutil.rmtree(ctx.layout.tools, ignore_errors=True)
        rc, tail = ctx.host.run([python, "-m", "venv", ctx.layout.tools], env=env, timeout=300)
        if rc == 0:
            rc, tail = ctx.host.run([os.path.join(ctx.layout.tools, "bin", "python"), "-m", "pip", "install",
                                     "--quiet", *pip_args(ctx.config), "uv"], env=env,
                                    timeout=ctx.config.webui.install_timeout)
    if rc != 0 or not os.path.exists(tools_uv):
        shutil.rmtree(ctx.layout.tools, ignore_errors=True)
        log.warning("uv unavailable", detail=" | ".join(tail[-3:]))
        return None
    return tools_uv


def preflight(ctx: Ctx, version: str) -> None:
    os.makedirs(ctx.layout.venvs, mode=0o755, exist_ok=True)
    free = ctx.host.free_bytes(ctx.layout.venvs)
    cur = current_version(ctx.layout)
    need = MIN_FREE
    if cur and os.path.isdir(ctx.layout.venv(cur)):
        need = max(need, int(1.1 * _tree_size(ctx.layout.venv(cur))))
    from localaid.config import format_size
    if free < need:
        raise WebUIError(f"not enough disk space for Open WebUI {version} in {ctx.layout.venvs}: "
                         f"{format_size(free)} free, about {format_size(need)} needed; free some space "
                         f"(old venvs: `localaid doctor` lists them) and retry")
    if cur is None and free < FIRST_INSTALL_HINT:
        log.warning("little disk space for a first Open WebUI install", free=format_size(free),
                    typical=format_size(FIRST_INSTALL_HINT))


def _tree_size(path: str) -> int:
    total = 0
    seen = set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _clear_dir(path: str) -> None:
    """Remove `path`, or only its contents when it is a mount point (a tmpfs, say)."""
    if not os.path.lexists(path):
        return
    if os.path.ismount(path):
        for name in os.listdir(path):
            p = os.path.join(path, name)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        return
    shutil.rmtree(path, ignore_errors=True)


UV_SUMMARY = re.compile(r"\s*(Resolved|Prepared|Installed|Uninstalled|Audited)\s+\d+\s+packages?\s+in\s+(.+?)\s*$")


def _uv_seconds(text: str) -> float | None:
    """uv's durations: "812ms", "1.52s", "1m 03s" → seconds."""
    total, found = 0.0, False
    for num, unit in re.findall(r"([0-9.]+)\s*(ms|s|m|h)\b", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
        found = True
    return round(total, 2) if found else None


def build_venv(ctx: Ctx, version: str) -> None:
    """Build venvs/<version> with uv or pip; idempotent (a complete venv is left alone).

    With uv, what does not need the venv runs beside its creation: uv's bootstrap (first install
    only) and the reading of the machine's pip configuration. The venv is made without pip and
    seeded by uv with the very wheels ensurepip would have installed (pip, and setuptools before
    3.12): the same venv, without the seconds ensurepip spends running pip to install pip."""
    layout, w = ctx.layout, ctx.config.webui
    if is_complete(layout, version):
        return
    t_check = ctx.host.monotonic()
    found = ctx.host.python_version(w.python)
    problem = python_problem(w.python, found, version)
    if problem:
        raise WebUIError(problem)
    preflight(ctx, version)
    ctx.timings["preflight"] = round(ctx.host.monotonic() - t_check, 2)
    venv = layout.venv(version)
    _clear_dir(venv)  # a half-built venv from an interrupted run
    env = _base_env()
    os.makedirs(layout.p(CACHE_DIR), mode=0o700, exist_ok=True)
    for d in (UV_CACHE, PIP_CACHE):
        os.makedirs(layout.p(d), mode=0o700, exist_ok=True)
    t0 = ctx.host.monotonic()
    phases: dict[str, float] = {}
    mark = [t0]

    def phase(name: str) -> None:
        now = ctx.host.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now - mark[0], 2)
        mark[0] = now

    def timed(name: str, fn, box: list) -> Callable[[], None]:
        def run():
            t = ctx.host.monotonic()
            try:
                box.append(fn())
            finally:
                phases[name] = round(ctx.host.monotonic() - t, 2)
        return run

    ctx.report("running", f"creating the venv for Open WebUI {version}", 0.02)
    use_uv = w.installer in ("auto", "uv")
    seed = ctx.host.seed_wheels(w.python) if use_uv else Seed()
    uv_box: list = []
    conf_box: list = []
    helpers = []
    if use_uv:
        helpers = [threading.Thread(target=timed("uv_bootstrap", lambda: find_uv(ctx, env, seed), uv_box),
                                    daemon=True),
                   threading.Thread(target=timed("pip_config", lambda: pip_config(ctx.host, w.python, env,
                                                                                 seed.pip(w.python)), conf_box),
                                    daemon=True)]
        for t in helpers:
            t.start()
    try:
        _make_venv(ctx, venv, env, with_pip=not seed.wheels)
        phases["venv"] = round(ctx.host.monotonic() - t0, 2)
    finally:
        for t in helpers:
            t.join()
    phase("setup")  # wall time of venv ∥ uv bootstrap ∥ pip configuration
    python = os.path.join(venv, "bin", "python")
    uv = uv_box[0] if uv_box else None
    if use_uv and uv is None and w.installer == "uv":
        _clear_dir(venv)
        raise WebUIError("webui.installer is uv, but uv is not on PATH and could not be pip-installed; "
                         "set webui.installer: auto or pip")
    run_env = env
    if uv:
        if seed.wheels:
            rc, tail = ctx.host.run([uv, "pip", "install", "--quiet", "--python", python, "--no-index", "--no-deps",
                                     *seed.wheels], env=dict(env, **_link_env(ctx)), timeout=300)
            if rc != 0:
                log.warning("cannot seed the venv with ensurepip's wheels: using ensurepip",
                            detail=" | ".join(tail[-3:]))
                _make_venv(ctx, venv, env, with_pip=True)
            phase("seed")
        conf = conf_box[0] if conf_box and conf_box[0] is not None else pip_config(ctx.host, python, env)
        args, extra_env = uv_args(ctx.config, conf or {})
        run_env = dict(env, **extra_env, **_link_env(ctx))
    elif seed.wheels:  # uv wanted but unavailable: pip installs, and the venv needs its own pip
        _make_venv(ctx, venv, env, with_pip=True)
        phase("venv_pip")
    spec = f"{DISTRIBUTION}=={version}"
    counts: dict[str, int] = {}
    last_text = [""]

    def on_line(line: str) -> None:
        m = UV_SUMMARY.match(line)
        if m:  # uv's own phase times: "Resolved 262 packages in 1.52s", "Prepared …", "Installed …"
            phases["uv_" + m.group(1).lower()] = _uv_seconds(m.group(2))
            say("uv: " + line.strip())
        text = installer_progress(line, counts)
        if text and text != last_text[0]:
            last_text[0] = text
            ctx.report("running", f"installing Open WebUI {version} with {'uv' if uv else 'pip'}: {text}", None)

    if uv:
        argv = [uv, "pip", "install", "--python", python, *args, spec]
    else:
        argv = [python, "-m", "pip", "install", "--progress-bar", "off", *pip_args(ctx.config), spec]
    ctx.report("running", f"installing Open WebUI {version} with {'uv' if uv else 'pip'}", 0.05)
    say("installing Open WebUI", version=version, installer="uv" if uv else "pip", venv=venv)
    rc, tail = ctx.host.run(argv, env=run_env, timeout=w.install_timeout, on_line=on_line)
    if rc != 0:
        hint = _space_hint(ctx, venv)
        _clear_dir(venv)
        raise WebUIError(f"installing {spec} with {'uv' if uv else 'pip'} failed: {_last(tail)}{hint}", tail)
    phase("install")
    got = venv_version(venv)
    if got != version:
        _clear_dir(venv)
        raise WebUIError(f"the venv holds open-webui {got}, not {version}")
    phase("verify")
    # Hand the directories (not the files) to the service user: plugin installs can add and
    # replace files; files hard-linked from uv's cache stay root's.
    for dirpath, dirs, _files in os.walk(venv):
        ctx.host.chown(dirpath, SERVICE_USER)
    phase("chown")
    elapsed = ctx.host.monotonic() - t0
    n = counts.get("installed") or counts.get("installing") or counts.get("resolved")
    ctx.timings.update(phases)
    fsutil.write_json(os.path.join(venv, COMPLETE_MARKER),
                      {"version": version, "installer": "uv" if uv else "pip", "python": w.python,
                       "packages": n, "seconds": round(elapsed, 1), "phases": phases, "built": time.time()})
    say("Open WebUI venv ready", version=version, packages=n, seconds=f"{elapsed:.1f}",
        phases=_phase_text(phases))


def _phase_text(phases: dict) -> str | None:
    """ "venv=0.4 install=41.2 ..." for the journal; None when nothing was timed."""
    return " ".join(f"{k}={v:.1f}" for k, v in phases.items() if v is not None) or None


def _make_venv(ctx: Ctx, venv: str, env: dict, with_pip: bool) -> None:
    w = ctx.config.webui
    _clear_dir(venv)
    rc, tail = ctx.host.run([w.python, "-m", "venv", venv] + ([] if with_pip else ["--without-pip"]),
                            env=env, timeout=300)
    if rc != 0:
        _clear_dir(venv)
        hint = _space_hint(ctx, venv)
        if any("ensurepip is not available" in t or "No module named ensurepip" in t or "No module named venv" in t
               for t in tail):
            hint = " (on Debian: apt install python3-venv)"
        raise WebUIError(f"`{w.python} -m venv {venv}` failed: {_last(tail)}{hint}", tail)


def _link_env(ctx: Ctx) -> dict[str, str]:
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


def _space_hint(ctx: Ctx, venv: str) -> str:
    """Python's venv module hides ensurepip's ENOSPC: look at the file system ourselves."""
    try:
        free = ctx.host.free_bytes(venv)
    except OSError:
        return ""
    if free < 64 * 2**20:
        from localaid.config import format_size
        return f" (No space left on device: {format_size(free)} free under {venv})"
    return ""


def _last(tail: list[str]) -> str:
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


# --------------------------------------------------------------------------------- configure
def ensure_secret(ctx: Ctx) -> str:
    path = ctx.layout.secret
    try:
        with open(path) as f:
            key = f.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32)
    fsutil.atomic_write(path, key + "\n", mode=0o600)
    ctx.host.chown(path, SERVICE_USER)
    return key


def ensure_admin_password(ctx: Ctx) -> str:
    path = ctx.layout.p(ctx.config.webui.admin.password_file)
    try:
        with open(path) as f:
            pw = f.read().strip()
        if pw:
            return pw
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    pw = secrets.token_urlsafe(18)
    fsutil.atomic_write(path, pw + "\n", mode=0o600)
    ctx.host.chown(path, None)
    say("generated the Open WebUI admin password", file=path, email=ctx.config.webui.admin.email)
    return pw


def gpu_groups(config) -> list[str]:
    out = []
    for name in (config.gpu.devices.group, "video", "render"):
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        if name not in out:
            out.append(name)
    return out


def _write_if_changed(path: str, text: str, mode: int) -> bool:
    try:
        with open(path) as f:
            same = f.read() == text
        if same and (os.stat(path).st_mode & 0o7777) == mode:
            return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fsutil.atomic_write(path, text, mode=mode)
    return True


def configure(ctx: Ctx) -> bool:
    """User, data dir, secret, admin password, env file, drop-in. True when the unit's
    configuration changed (a running service must be restarted to see it)."""
    w, layout, host = ctx.config.webui, ctx.layout, ctx.host
    data_dir = layout.p(w.data_dir)
    host.ensure_user(SERVICE_USER, w.data_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    host.chown(data_dir, SERVICE_USER)
    os.chmod(data_dir, 0o700)
    for d in (layout.base, layout.venvs, layout.backups):
        os.makedirs(d, mode=0o755, exist_ok=True)
    os.chmod(layout.backups, 0o700)
    key = ensure_secret(ctx)
    password = ensure_admin_password(ctx)
    changed = _write_if_changed(layout.env_file, render_env(ctx.config, key, password), 0o600)
    dropin = render_dropin(ctx.config, gpu_groups(ctx.config))
    if dropin:
        if _write_if_changed(layout.dropin, dropin, 0o644):
            changed = True
            host.daemon_reload()
    elif os.path.exists(layout.dropin):
        os.unlink(layout.dropin)
        changed = True
        host.daemon_reload()
    return changed


# ---------------------------------------------------------------------------------- service
def wait_healthy(ctx: Ctx, version: str, timeout: float) -> str | None:
    """Wait for /health and /ready (and /api/version == version). None when healthy, else why."""
    w, host = ctx.config.webui, ctx.host
    hostname = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(w.host, w.host)
    base = f"http://{'[' + hostname + ']' if ':' in hostname else hostname}:{w.port}"
    start = host.monotonic()
    first = host.unit_state(UNIT).n_restarts
    last, shown = "no answer yet", None
    while host.monotonic() - start < timeout:
        st = host.unit_state(UNIT)
        if st.n_restarts - first >= 2 or (st.active_state == "failed" and not st.job):
            return f"open-webui.service keeps failing ({st.active_state}, result {st.result or '-'}, " \
                   f"{st.n_restarts - first} restarts): journalctl -u open-webui"
        status, _ = host.get(base + "/health")
        if status == 200:
            ctx.timings.setdefault("to_health", round(host.monotonic() - start, 2))
            rstatus, _ = host.get(base + "/ready")
            vstatus, body = host.get(base + "/api/version")
            got = body.get("version") if isinstance(body, dict) else None
            if rstatus == 200 and vstatus == 200 and got == version:
                ctx.timings["to_ready"] = round(host.monotonic() - start, 2)
                return None
            last = f"/ready {rstatus}, version {got}"
        else:
            last = f"/health {status or 'no answer'}"
        if last != shown:
            ctx.report("running", f"waiting for Open WebUI {version} to answer ({last})", 0.9)
            shown = last
        host.sleep(0.5)
    return f"Open WebUI {version} not healthy after {timeout:.0f} s ({last})"


def start_timeout(config) -> float:
    return max(60.0, config.health.webui_start_grace)


# ---------------------------------------------------------------------------------- upgrade
def _db(ctx: Ctx) -> str:
    return os.path.join(ctx.layout.p(ctx.config.webui.data_dir), "webui.db")


def _set_maintenance(ctx: Ctx, on: bool) -> None:
    path = ctx.layout.maintenance
    if on:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fsutil.atomic_write(path, f"{os.getpid()}\n")
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _advance(ctx: Ctx, j: dict, step: str, **extra) -> dict:
    j = dict(j, step=step, **extra)
    j.setdefault("log", []).append([step, round(time.time(), 3)])
    write_journal(ctx.layout, j)
    return j


def backup_db(ctx: Ctx, version_from: str | None) -> dict:
    """Copy webui.db (and a WAL left by a crash) into backups/; {} when there is no database."""
    db = _db(ctx)
    if not os.path.exists(db):
        return {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"webui-{version_from or 'none'}-{stamp}.db"
    dst = os.path.join(ctx.layout.backups, name)
    copy_durably(db, dst)
    out = {"backup": dst, "db_sha256": sha256(dst), "wal": None}
    if os.path.exists(db + "-wal") and os.path.getsize(db + "-wal") > 0:
        copy_durably(db + "-wal", dst + "-wal")
        out["wal"] = dst + "-wal"
    return out


def restore_db(ctx: Ctx, j: dict) -> None:
    if not j.get("backup"):
        return
    db = _db(ctx)
    if not (os.path.exists(db) and sha256(db) == j["db_sha256"]):
        copy_durably(j["backup"], db)
        ctx.host.chown(db, SERVICE_USER)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.unlink(db + suffix)
        except FileNotFoundError:
            pass
    if j.get("wal"):
        copy_durably(j["wal"], db + "-wal")
        ctx.host.chown(db + "-wal", SERVICE_USER)
    got = sha256(db)
    if got != j["db_sha256"]:
        raise WebUIError(f"restored {db} does not match its backup ({got[:12]} != {j['db_sha256'][:12]})")


def prune(ctx: Ctx) -> None:
    layout, w = ctx.layout, ctx.config.webui
    backups = sorted(f for f in os.listdir(layout.backups) if f.endswith(".db")) \
        if os.path.isdir(layout.backups) else []
    for name in backups[:-w.keep_backups] if len(backups) > w.keep_backups else []:
        for f in (name, name + "-wal"):
            try:
                os.unlink(os.path.join(layout.backups, f))
            except FileNotFoundError:
                pass
    cur = current_version(layout)
    try:
        versions = os.listdir(layout.venvs)
    except FileNotFoundError:
        return
    complete = [v for v in versions if is_complete(layout, v)]
    for v in versions:  # leftovers of failed builds
        if v not in complete and v != cur:
            _clear_dir(layout.venv(v))
    keep = {cur} if cur else set()
    by_age = sorted(complete, key=lambda v: os.path.getmtime(os.path.join(layout.venv(v), COMPLETE_MARKER)),
                    reverse=True)
    for v in by_age:
        if len(keep) >= w.keep_venvs:
            break
        keep.add(v)
    for v in complete:
        if v not in keep:
            say("removing old Open WebUI venv", version=v)
            _clear_dir(layout.venv(v))


def _record_installed(ctx: Ctx, version: str, config_version: str) -> None:
    fsutil.write_json(ctx.layout.installed, {"version": version, "config_version": config_version,
                                             "at": time.time()})


def run_upgrade(ctx: Ctx, j: dict) -> int:
    """Drive the journal `j` to its end: the new version healthy, or the old one back."""
    layout, host = ctx.layout, ctx.host
    to, frm = j["to"], j.get("from")
    label = f"Open WebUI {frm} → {to}" if frm else f"Open WebUI {to}"
    step = j["step"]
    if step == "build":
        try:
            build_venv(ctx, to)
        except WebUIError as e:
            os.unlink(layout.journal)
            ctx.report("failed", f"{label}: {e}" + (f"; {frm} keeps serving" if frm else ""),
                       detail=getattr(e, "tail", ()))
            log.error("Open WebUI install failed", version=to, error=str(e))
            return 1
        _set_maintenance(ctx, True)
        j = _advance(ctx, j, "stop")
        step = "stop"
    _set_maintenance(ctx, True)
    try:
        if step == "stop":
            t_stop = time.time()
            ctx.report("running", f"{label}: stopping the old version", 0.6)
            host.stop(UNIT)
            j = _advance(ctx, j, "backup", stopped_at=t_stop)
            step = "backup"
        if step == "backup":
            ctx.report("running", f"{label}: backing up webui.db", 0.65)
            j = _advance(ctx, j, "switch", **backup_db(ctx, frm))
            step = "switch"
        if step == "switch":
            switch_current(layout, to)
            j = _advance(ctx, j, "start")
            step = "start"
        if step == "start":
            ctx.report("running", f"{label}: starting", 0.8)
            t_start = host.monotonic()
            _enable(ctx)
            host.start(UNIT)
            ctx.timings["start_job"] = round(host.monotonic() - t_start, 2)
            why = wait_healthy(ctx, to, start_timeout(ctx.config))
            if why is None:
                _record_installed(ctx, to, j.get("config_version", ctx.config.webui.version))
                downtime = time.time() - j["stopped_at"] if j.get("stopped_at") and frm else None
                os.unlink(layout.journal)
                prune(ctx)
                ctx.report("done", f"Open WebUI {to} serving on {ctx.config.webui.url}", 1.0)
                say("Open WebUI upgraded" if frm else "Open WebUI installed", version=to, previous=frm,
                    downtime=f"{downtime:.1f}s" if downtime is not None else None,
                    phases=_phase_text(ctx.timings))
                return 0
            j = _advance(ctx, j, "rollback", reason=why)
            step = "rollback"
        return _rollback(ctx, j)
    finally:
        if not os.path.exists(layout.journal):
            _set_maintenance(ctx, False)


def _rollback(ctx: Ctx, j: dict) -> int:
    layout, host = ctx.layout, ctx.host
    to, frm = j["to"], j.get("from")
    why = j.get("reason", "interrupted")
    log.error("Open WebUI upgrade failed: rolling back", version=to, previous=frm, reason=why)
    ctx.report("running", f"Open WebUI {to} failed ({why}): rolling back to {frm or 'nothing'}", 0.9)
    host.stop(UNIT)
    restore_db(ctx, j)
    if frm and is_complete(layout, frm):
        switch_current(layout, frm)
        host.start(UNIT)
        back = wait_healthy(ctx, frm, start_timeout(ctx.config))
    else:
        switch_current(layout, None)
        back = "no previous version to return to"
    os.unlink(layout.journal)
    _set_maintenance(ctx, False)
    if back is None:
        msg = f"Open WebUI {to} failed to start ({why}); rolled back to {frm}, database restored"
    else:
        msg = f"Open WebUI {to} failed to start ({why}); rollback: {back}; database restored"
    ctx.report("failed", msg)
    log.error(msg)
    return 1


def _enable(ctx: Ctx) -> None:
    if not os.path.exists(ctx.layout.enabled_marker):
        ctx.host.enable(UNIT)
        fsutil.atomic_write(ctx.layout.enabled_marker, "localaid enabled open-webui.service\n")


def _lock(layout: Layout):
    os.makedirs(layout.base, mode=0o755, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("another localaid Open WebUI job is running: waiting for it")
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def resume(ctx: Ctx) -> int | None:
    """Finish an upgrade a killed localaid left behind; None when there was none."""
    j = read_journal(ctx.layout)
    if j is None:
        return None
    say("resuming an interrupted Open WebUI upgrade", step=j["step"], to=j["to"], previous=j.get("from"))
    if j["step"] == "rollback":
        return _rollback(ctx, j)
    return run_upgrade(ctx, j)


def install(ctx: Ctx, version: str, config_version: str, restart: bool = False) -> int:
    """Make `version` the serving one: nothing when it already is, else build → switch → start."""
    layout, host = ctx.layout, ctx.host
    cur = current_version(layout)
    if cur == version and is_complete(layout, version):
        _enable(ctx)
        st = host.unit_state(UNIT)
        running = st.active_state in ("active", "activating", "reloading")
        if restart and running:
            say("open-webui configuration changed: restarting it")
            host.restart(UNIT)
        elif not running and not st.job:
            host.start(UNIT)
        if restart or not running or st.job:
            why = wait_healthy(ctx, version, start_timeout(ctx.config))
            if why:
                ctx.report("failed", why)
                return 1
        ctx.report("done", f"Open WebUI {version} serving on {ctx.config.webui.url}", 1.0)
        return 0
    j = {"to": version, "from": cur if cur and is_complete(layout, cur) else None, "step": "build",
         "config_version": config_version, "pid": os.getpid(), "started": time.time()}
    write_journal(layout, j)
    return run_upgrade(ctx, j)


def disable(ctx: Ctx) -> int:
    layout, host = ctx.layout, ctx.host
    if os.path.exists(layout.enabled_marker):
        say("webui.enabled is false: stopping and disabling open-webui.service")
        host.stop(UNIT)
        host.disable(UNIT)
        os.unlink(layout.enabled_marker)
    ctx.report("done", "Open WebUI disabled in the configuration", 1.0)
    return 0


# ---------------------------------------------------------------------------------- entries
def provision_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid provision webui` (localaid-webui-setup.service): install/configure, idempotent."""
    ctx = ctx or Ctx(config)
    fd = _lock(ctx.layout)
    try:
        if not config.webui.enabled:
            return disable(ctx)
        ctx.report("running", "configuring Open WebUI", 0.0)
        changed = configure(ctx)
        rc = resume(ctx)
        if rc is not None:
            return rc
        return install(ctx, wanted_version(config, ctx.layout), config.webui.version, restart=changed)
    except WebUIError as e:
        ctx.report("failed", str(e), detail=getattr(e, "tail", ()))
        log.error("Open WebUI provisioning failed", error=str(e))
        return 1
    finally:
        os.close(fd)


def upgrade_main(args, config, ctx: Ctx | None = None) -> int:
    """`localaid upgrade webui [--version V]`: build beside, back up, switch, verify, or roll back."""
    ctx = ctx or Ctx(config)
    if not config.webui.enabled:
        print("webui.enabled is false in the configuration: nothing to upgrade", file=sys.stderr)
        return 1
    target = getattr(args, "target_version", None) or config.webui.version
    fd = _lock(ctx.layout)
    try:
        configure(ctx)
        rc = resume(ctx)
        if rc is not None and rc != 0:
            return rc
        cur = current_version(ctx.layout)
        if cur == target and is_complete(ctx.layout, target):
            print(f"Open WebUI {target} is already installed and current")
            return install(ctx, target, config.webui.version)
        rc = install(ctx, target, config.webui.version)
        if rc == 0 and target != config.webui.version:
            print(f"note: webui.version in the configuration is still {config.webui.version}; "
                  f"localaid keeps {target} until you change it")
        if rc != 0:
            p = progress.read(ctx.job)
            print(f"error: {p.text if p else 'upgrade failed'}", file=sys.stderr)
        return rc
    except WebUIError as e:
        ctx.report("failed", str(e), detail=getattr(e, "tail", ()))
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ doctor
def doctor_checks(config, layout: Layout | None = None) -> list:
    from localaid.records import Check
    layout = layout or Layout()
    w = config.webui
    if not w.enabled:
        return [Check("open-webui", True, "disabled in the configuration (webui.enabled: false)")]
    checks = []
    j = read_journal(layout)
    if j:
        checks.append(Check("open-webui upgrade", False,
                            f"an upgrade to {j['to']} was interrupted at step {j['step']}",
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
        marker = fsutil.read_json(os.path.join(layout.venv(cur), COMPLETE_MARKER)) or {}
        ok = True if cur == wanted else None
        checks.append(Check("open-webui venv", ok,
                            f"Open WebUI {cur} ({marker.get('installer', '?')}, {marker.get('packages', '?')} "
                            f"packages)" + ("" if ok else f"; configured: {wanted}"),
                            "" if ok else "localaid upgrade webui"))
    others = sorted(v for v in (os.listdir(layout.venvs) if os.path.isdir(layout.venvs) else []) if v != cur)
    if others:
        checks.append(Check("open-webui old venvs", True, "kept for rollback: " + ", ".join(others)))
    problem = python_problem(w.python, Host().python_version(w.python), wanted)
    if problem:
        checks.append(Check("open-webui python", None if cur else False, problem))
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
        st = os.stat(layout.p(w.data_dir))
        owner = pwd.getpwuid(st.st_uid).pw_name
        ok = owner == SERVICE_USER and st.st_mode & 0o077 == 0
        checks.append(Check("open-webui data", ok, f"{w.data_dir} owned by {owner}, mode {st.st_mode & 0o777:04o}",
                            f"chown -R {SERVICE_USER}: {w.data_dir}; chmod 700 {w.data_dir}"))
    except (FileNotFoundError, KeyError) as e:
        checks.append(Check("open-webui data", None, f"{w.data_dir}: {e}"))
    host = Host()
    hostname = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(w.host, w.host)
    base = f"http://{'[' + hostname + ']' if ':' in hostname else hostname}:{w.port}"
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
