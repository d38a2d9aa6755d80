"""Where Open WebUI's pieces live, which version serves, and the state a job carries (Ctx).

    /var/lib/localaid/webui/
        venvs/<version>/          one venv per version, built by the service user in a sandbox;
                                  ``.localaid-complete`` (root's) is written last
        venvs/.cache/{uv,pip}     the installers' caches (the service user's): in the same
                                  directory as the venvs, so that the build unit has both in one
                                  writable mount and uv hard-links from its cache (no 7 GB copy)
        current -> venvs/<v>      switched atomically (rename of a new symlink over the old)
        backups/webui-<v>-<utc>.db   webui.db copies taken before a version first starts (root
                                  0700: out of reach of the web app whose upgrade they undo)
        secret-key                WEBUI_SECRET_KEY, generated once (0600, the service user's)
        admin-created             the admin exists: its password left the environment file
        upgrade.json              the journal of an upgrade under way (step by step)
        installed.json            version installed and the configured pin it answered
        tools/                    uv, pip-installed there (by the service user) when none is on PATH
    `apt purge` keeps backups/ and secret-key (debian/localaid.postrm says where they are).
    /run/localaid/webui-build/    the build units' environment files (root 0700), while they run
    /etc/localaid/open-webui.env  EnvironmentFile of open-webui.service (0600 root)
    /etc/systemd/system/open-webui.service.d/50-localaid.conf   data dir, GPU access
    /etc/systemd/system/localaid-webui-setup.service.d/50-localaid.conf   a data dir outside /var
    /run/localaid/maintenance/open-webui   PID of an upgrade at work: the supervisor keeps off
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

from localaid import fsutil, paths
from localaid.provision import safefs
from localaid.provision.job import Journal, Reporter
import localaid.provision.webui.sandbox as sandbox
from localaid.provision.webui.installer import WebUIHost

JOB = "webui-setup"
UNIT = "open-webui.service"
SETUP_UNIT = "localaid-webui-setup.service"
SERVICE_USER = "open-webui"
DISTRIBUTION = "open-webui"
COMPLETE_MARKER = ".localaid-complete"
ENV_FILE = "/etc/localaid/open-webui.env"
DROPIN_DIR = "/etc/systemd/system/open-webui.service.d"
DROPIN = DROPIN_DIR + "/50-localaid.conf"
SETUP_DROPIN = "/etc/systemd/system/localaid-webui-setup.service.d/50-localaid.conf"
UNIT_DATA_DIR = "/var/lib/open-webui"  # the default the shipped unit names


@dataclass(frozen=True)
class Layout:
    """Every path the job touches; `root` prefixes them all (tests use a temporary root)."""
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
    def cache(self) -> str:
        return os.path.join(self.venvs, ".cache")

    @property
    def uv_cache(self) -> str:
        return os.path.join(self.cache, "uv")

    @property
    def pip_cache(self) -> str:
        return os.path.join(self.cache, "pip")

    @property
    def legacy_cache(self) -> str:
        """Where earlier releases kept root's installer caches (removed by the next build)."""
        return self.p("/var/cache/localaid")

    @property
    def build_env_dir(self) -> str:
        return self.p(os.path.join(self.run_dir, "webui-build"))

    def versions(self) -> list[str]:
        """The entries of venvs/ that are venvs (not the caches)."""
        try:
            return sorted(v for v in os.listdir(self.venvs) if not v.startswith("."))
        except FileNotFoundError:
            return []

    @property
    def overrides(self) -> str:
        """uv's --override file (root's, 0644): what webui.torch: false leaves out."""
        return os.path.join(self.base, "uv-overrides.txt")

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
    def admin_marker(self) -> str:
        return os.path.join(self.base, "admin-created")

    @property
    def default_model_marker(self) -> str:
        """The default model localaid last wrote into Open WebUI's settings."""
        return os.path.join(self.base, "default-model")

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
    def setup_dropin(self) -> str:
        return self.p(SETUP_DROPIN)

    @property
    def maintenance_dir(self) -> str:
        return self.p(os.path.join(self.run_dir, "maintenance"))

    @property
    def maintenance(self) -> str:
        return os.path.join(self.maintenance_dir, "open-webui")


@dataclass
class Ctx:
    """One run of a job: its configuration, paths, machine, voice and what it measured."""
    config: object
    layout: Layout = field(default_factory=Layout)
    host: WebUIHost = field(default_factory=WebUIHost)
    job: str = JOB
    timings: dict = field(default_factory=dict)  # phase -> seconds, for the journal and bench/webui.py
    hook: object = None  # called with each step's name before it runs (tests kill there)
    rep: Reporter | None = None
    rolled_back: str | None = None  # what a rollback of this run achieved, for its last word

    def __post_init__(self) -> None:
        if self.rep is None:
            self.rep = Reporter(self.job)

    def data_dir(self) -> str:
        return self.layout.p(self.config.webui.data_dir)


def jail(ctx, what: str, writable: list[str], readonly: list[str] = ()) -> sandbox.Jail:
    """A build unit (sandbox.py) that writes `writable` only; the data dir is out of its sight."""
    unit = sandbox.unit_name(what)
    data, base = ctx.data_dir(), ctx.layout.base
    hidden = () if (base + "/").startswith(data.rstrip("/") + "/") else (data,)
    return sandbox.Jail(unit, SERVICE_USER, os.path.join(ctx.layout.build_env_dir, unit + ".env"),
                        tuple(writable), tuple(readonly), hidden)


def journal(layout: Layout) -> Journal:
    return Journal(layout.journal)


def current_version(layout: Layout) -> str | None:
    try:
        target = os.readlink(layout.current)
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def is_complete(layout: Layout, version: str) -> bool:
    """The venv's marker is a regular file (lstat: the service user owns the venv's directory)."""
    try:
        return stat.S_ISREG(os.lstat(os.path.join(layout.venv(version), COMPLETE_MARKER)).st_mode)
    except OSError:
        return False


def marker(layout: Layout, version: str) -> dict:
    """What the build recorded in the venv's marker ({} when unreadable)."""
    raw = safefs.read(os.path.join(layout.venv(version), COMPLETE_MARKER))
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


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


def venv_version(venv: str) -> str | None:
    """The open-webui version installed in `venv`, read from its dist-info (nothing executed;
    read before the venv is handed to the service user)."""
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
