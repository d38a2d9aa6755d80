"""The install/upgrade state machine of localaid.provision.webui on a temporary file-system root.

The Host double stands in for what needs root and systemd (users, chown, units, the installer
process, HTTP to the service); every file localaid writes is real, under tmp_path. A "kill -9"
is an exception raised right after the journal records a step (or inside a systemd call); the
next provision run must then finish the upgrade or roll it back. (test_webui_kill.py kills a
real process.)
"""

import dataclasses
import json
import os
import stat
import re
import subprocess

import pytest

from localaid import paths
from localaid.config import Config, HealthConfig, WebUIConfig
from localaid.records import UnitState
from localaid.provision import webui
from localaid.provision.host import Result

DATA = "/var/lib/open-webui"
ORIGINAL_DB = b"SQLite format 3\x00 original rows"


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= reading of what sandbox.env_quote writes."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        out[key] = value
    return out


def store_backups(layout):
    from localaid.provision.webui import backups
    return backups.listing(layout.p("/var/lib/localaid/backups"))


class Killed(BaseException):
    """kill -9: nothing after it runs (BaseException: no `except Exception` catches it)."""


class AdminDouble:
    """Open WebUI's admin API as the set-up job uses it (its embedding settings, the default model)."""

    def __init__(self):
        self.settings = {"RAG_EMBEDDING_ENGINE": "", "RAG_EMBEDDING_MODEL": "sentence-transformers/all-MiniLM-L6-v2",
                         "ollama_config": {"url": "", "key": ""}}
        self.updates: list[tuple] = []
        self.refuse = None
        self.default_models: str | None = None  # Open WebUI's DEFAULT_MODELS
        self.default_updates: list[str] = []

    def _refused(self):
        if self.refuse:
            from localaid.adapters.webui_admin import AdminError
            raise AdminError(self.refuse)

    def embedding(self):
        self._refused()
        return dict(self.settings)

    def models_config(self):
        self._refused()
        return {"DEFAULT_MODELS": self.default_models, "DEFAULT_PINNED_MODELS": None, "MODEL_ORDER_LIST": [],
                "DEFAULT_MODEL_METADATA": None, "DEFAULT_MODEL_PARAMS": None}

    def set_default_model(self, model):
        self.default_updates.append(model)
        self.default_models = model

    def set_embedding(self, engine, model, url, key=""):
        self.updates.append((engine, model, url) + ((key,) if key else ()))
        self.settings = {"RAG_EMBEDDING_ENGINE": engine, "RAG_EMBEDDING_MODEL": model,
                         "ollama_config": {"url": url or "", "key": key}}


class FakeHost(webui.Host):
    def __init__(self, layout: webui.Layout):
        super().__init__()
        self.layout = layout
        self.free = 10**12
        self.python = (3, 11, 2)
        self.managed_version = "3.11.2"  # what the uv double installs
        self.admin = AdminDouble()
        self.planted_link = None  # a link the download plants in the interpreter's tree
        self.fail_install: set[str] = set()
        self.unhealthy: set[str] = set()
        self.migration = {"0.12.5": b"SQLite format 3\x00 migrated by 0.12.5"}
        self.active = False
        self.serving: str | None = None
        self.enabled = False
        self.clock = 0.0
        self.calls: list[tuple] = []
        self.other_units: dict[str, str] = {}
        self.kill_in: str | None = None
        self.pip_conf_lines: list[str] = []
        self.seed = webui.Seed()  # no ensurepip wheels found: venvs made with pip, uv in a tools venv
        self.argvs: list[list[str]] = []  # every command line, as ps would show it
        self.units: list[dict] = []  # the build units: name, properties, environment, command

    def _maybe_kill(self, what: str) -> None:
        if self.kill_in == what:
            self.kill_in = None
            raise Killed(what)

    def ensure_user(self, name, home, comment=""):
        self.calls.append(("useradd", name, home))

    def ids(self, name):
        return os.getuid(), os.getgid()

    def chown(self, path, user):
        pass

    def free_bytes(self, path):
        return self.free

    def run(self, argv, **kw):
        argv = list(argv)
        self.argvs.append(argv)
        if argv[0] == "systemctl":
            self.calls.append(("systemctl", *argv[1:]))
            return Result(0, ())
        if argv[0] == "systemd-run":  # a build step in its transient unit (sandbox.py): run its command
            cut = argv.index("--")
            props = [a.split("=", 1)[1] for a in argv[:cut] if a.startswith("--property=")]
            env_file = next(p.split("=", 1)[1] for p in props if p.startswith("EnvironmentFile="))
            with open(env_file) as f:
                env = parse_env_file(f.read())
            self.units.append({"unit": argv[1].split("=", 1)[1], "props": props, "env": env,
                               "argv": argv[cut + 1:], "env_mode": os.stat(env_file).st_mode & 0o777})
            argv = argv[cut + 1:]
            if argv[1:3] == ["python", "install"]:  # uv installs an interpreter (the download double)
                return self._uv_python(argv, env)
            if argv[1] == "-c" and "ssl" in argv[2]:  # the service user runs it once
                return Result(0, (self.managed_version,))
        rc, tail = self._run(argv, kw.get("on_line"))
        return Result(rc, tuple(tail))

    def webui_admin(self, config, layout):
        return self.admin

    def _uv_python(self, argv, env):
        self.calls.append(("run", tuple(argv)))
        name = f"cpython-{self.managed_version}-linux-x86_64-gnu"
        top = os.path.join(env["UV_PYTHON_INSTALL_DIR"], name)
        os.makedirs(os.path.join(top, "lib", "python3.11"))
        exe = os.path.join(top, "bin", "python" + self.managed_version.rsplit(".", 1)[0])
        os.makedirs(os.path.dirname(exe))
        with open(exe, "w") as f:
            f.write("#!interpreter\n")
        os.chmod(exe, 0o4775)  # set-id and group write: neither survives root's copy
        os.symlink(os.path.basename(exe), os.path.join(top, "bin", "python3"))
        if self.planted_link:
            os.symlink(self.planted_link, os.path.join(top, "lib", "python3.11", "site.py"))
        os.symlink(name, os.path.join(env["UV_PYTHON_INSTALL_DIR"], "cpython-3.11-linux-x86_64-gnu"))
        return Result(0, (f"Installed Python {self.managed_version} in 91ms",))

    def _run(self, argv, on_line):
        if argv[1:3] == ["-I", "-c"] and "s.backup(d)" in argv[3]:  # snapshot.py's SQLite copy, as the service user
            self.calls.append(("snapshot", tuple(argv[4:])))
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            return r.returncode, (r.stdout + r.stderr).splitlines()
        self.calls.append(("run", tuple(argv)))
        if argv[1:3] == ["-m", "venv"]:
            os.makedirs(os.path.join(argv[3], "bin"), exist_ok=True)
            open(os.path.join(argv[3], "bin", "python"), "w").close()
            return 0, []
        if argv[1:4] == ["-m", "pip", "config"] or argv[2:4] == ["config", "list"]:
            return 0, self.pip_conf_lines
        if "install" in argv and argv[-1] == "uv":  # localaid's tools venv (or --target dir) gets uv
            bindir = os.path.join(argv[argv.index("--target") + 1], "bin") if "--target" in argv \
                else os.path.dirname(argv[0])
            assert bindir.startswith(self.layout.root), bindir  # never the real machine's bin
            os.makedirs(bindir, exist_ok=True)
            open(os.path.join(bindir, "uv"), "w").close()
            return 0, []
        if "install" in argv and "--no-deps" in argv:  # uv seeds a venv made --without-pip
            python = argv[argv.index("--python") + 1]
            site = os.path.join(os.path.dirname(os.path.dirname(python)), "lib", "python3.11", "site-packages")
            for wheel in argv[argv.index("--no-deps") + 1:]:
                os.makedirs(os.path.join(site, os.path.basename(wheel).split("-")[0] + "-0.dist-info"))
            return 0, []
        if "install" in argv:
            self._maybe_kill("install")
            spec = argv[-1]
            version = spec.split("==")[1]
            python = argv[argv.index("--python") + 1] if "--python" in argv else argv[0]
            venv = os.path.dirname(os.path.dirname(python))
            if version in self.fail_install:
                return 1, [f"ERROR: No matching distribution found for {spec}"]
            os.makedirs(os.path.join(venv, "lib", "python3.11", "site-packages",
                                     f"open_webui-{version}.dist-info"))
            for line in ("Collecting open-webui", "Installing collected packages: a, b, open-webui",
                         "Successfully installed a-1 b-1 open-webui-" + version):
                on_line and on_line(line)
            return 0, ["Successfully installed"]
        raise AssertionError(f"unexpected command {argv}")

    def python_version(self, python):
        return self.python

    def which(self, name):
        return None

    def seed_wheels(self, python):
        return self.seed

    def daemon_reload(self):
        self.calls.append(("daemon-reload",))

    # Units other than open-webui.service (localaid-backup.timer): their state, nothing else.
    def _other(self, unit, state=None):
        if unit == webui.UNIT:
            return False
        if state is not None:
            self.other_units[unit] = state
        return True

    def enable(self, unit):
        if not self._other(unit):
            self.enabled = True

    def disable(self, unit):
        if not self._other(unit, "inactive"):
            self.enabled = False

    def unit_state(self, unit):
        if unit != webui.UNIT:
            state = self.other_units.get(unit, "inactive")
            return UnitState(unit, "loaded", state, "waiting" if state == "active" else "dead")
        return UnitState(unit, "loaded", "active" if self.active else "inactive",
                         "running" if self.active else "dead")

    def start(self, unit):
        if self._other(unit, "active"):
            return
        self._maybe_kill("start")
        self.active = True
        self.serving = webui.current_version(self.layout)
        self.calls.append(("start", self.serving))
        db = self.layout.p(DATA) + "/webui.db"
        if self.serving in self.migration and os.path.exists(db):
            with open(db, "wb") as f:  # one-way migration on start
                f.write(self.migration[self.serving])

    def restart(self, unit):
        self.stop(unit)
        self.start(unit)

    def stop(self, unit, timeout=90):
        if self._other(unit, "inactive"):
            return
        self._maybe_kill("stop")
        self.active = False
        self.calls.append(("stop", self.serving))

    def get(self, url, timeout=2.0):
        if not self.active:
            return None, None
        if url.endswith("/health"):
            return 200, {"status": True}
        if url.endswith("/ready"):
            return (503, None) if self.serving in self.unhealthy else (200, {"status": True})
        if url.endswith("/api/version"):
            return 200, {"version": self.serving}
        return 404, None

    def sleep(self, seconds):
        self.clock += seconds

    def monotonic(self):
        return self.clock


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "run/localaid/progress"))
    layout = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    host = FakeHost(layout)
    return layout, host


def config(version="0.12.4", **kw) -> Config:
    w = dataclasses.replace(WebUIConfig(), version=version, installer="pip", **kw)
    return dataclasses.replace(Config(), webui=w, health=dataclasses.replace(HealthConfig(), webui_start_grace=30))


def provision(layout, host, cfg, hook=None) -> int:
    return webui.provision_main(None, cfg, webui.Ctx(cfg, layout, host, hook=hook))


def upgrade(layout, host, cfg, version, hook=None) -> int:
    args = type("Args", (), {"target_version": version})()
    return webui.upgrade_main(args, cfg, webui.Ctx(cfg, layout, host, hook=hook))


def db_path(layout) -> str:
    return layout.p(DATA) + "/webui.db"


def job(tmp_path) -> dict:
    return json.loads((tmp_path / "run/localaid/progress/webui-setup.json").read_text())


def installed(layout, host, tmp_path, version="0.12.4"):
    assert provision(layout, host, config(version)) == 0
    with open(db_path(layout), "wb") as f:
        f.write(ORIGINAL_DB)


# ------------------------------------------------------------------------------ first install
def test_first_install(env, tmp_path):
    layout, host = env
    assert provision(layout, host, config()) == 0
    assert webui.current_version(layout) == "0.12.4" and webui.is_complete(layout, "0.12.4")
    assert host.active and host.serving == "0.12.4" and host.enabled
    assert ("useradd", "open-webui", DATA) in host.calls
    assert oct(os.stat(layout.env_file).st_mode & 0o777) == "0o600"
    assert oct(os.stat(layout.secret).st_mode & 0o777) == "0o600"
    pw = layout.p("/etc/localaid/webui-admin-password")
    assert oct(os.stat(pw).st_mode & 0o777) == "0o600"
    assert f"WEBUI_ADMIN_PASSWORD={open(pw).read().strip()}" in open(layout.env_file).read()
    assert oct(os.stat(layout.p(DATA)).st_mode & 0o777) == "0o700"
    assert not os.path.exists(layout.journal) and not os.path.exists(layout.maintenance)
    marker = json.load(open(os.path.join(layout.venv("0.12.4"), webui.COMPLETE_MARKER)))
    assert marker["installer"] == "pip" and marker["packages"] == 3
    assert job(tmp_path)["state"] == "done"


def test_second_run_does_nothing_and_keeps_secrets(env):
    layout, host = env
    assert provision(layout, host, config()) == 0
    key, env_text = open(layout.secret).read(), open(layout.env_file).read()
    host.calls.clear()
    assert provision(layout, host, config()) == 0
    assert [c for c in host.calls if c[0] in ("run", "start", "stop")] == []
    assert open(layout.secret).read() == key and open(layout.env_file).read() == env_text


def test_config_change_restarts_service(env):
    layout, host = env
    assert provision(layout, host, config()) == 0
    host.calls.clear()
    assert provision(layout, host, config(port=3999)) == 0
    assert ("stop", "0.12.4") in host.calls and ("start", "0.12.4") in host.calls
    assert "PORT=3999" in open(layout.env_file).read()


def test_interrupted_build_is_redone(env):
    layout, host = env
    host.kill_in = "install"
    with pytest.raises(Killed):
        provision(layout, host, config())
    assert os.path.isdir(layout.venv("0.12.4")) and not webui.is_complete(layout, "0.12.4")
    assert provision(layout, host, config()) == 0
    assert webui.is_complete(layout, "0.12.4") and host.serving == "0.12.4"


def test_wrong_python_changes_nothing(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    host.python = (3, 13, 5)
    cfg = dataclasses.replace(config(), webui=dataclasses.replace(config().webui, python="/usr/bin/python3"))
    assert provision(layout, host, cfg) == 0  # the installed version needs no interpreter
    assert upgrade(layout, host, cfg, "0.12.5") == 1
    assert job(tmp_path)["state"] == "blocked" and "Python 3.11 or 3.12" in job(tmp_path)["text"]
    assert host.serving == "0.12.4" and host.active and webui.current_version(layout) == "0.12.4"
    assert not os.path.exists(layout.venv("0.12.5")) and not os.path.exists(layout.journal)


def test_preflight_refuses_without_space(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    host.free = 100 * 2**20
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert "not enough disk space" in job(tmp_path)["text"]
    assert host.serving == "0.12.4" and host.active and open(db_path(layout), "rb").read() == ORIGINAL_DB


# ----------------------------------------------------------------------------------- upgrade
def test_upgrade_success_backs_up_and_keeps_old(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    assert upgrade(layout, host, config(), "0.12.5") == 0
    assert host.serving == "0.12.5" and webui.current_version(layout) == "0.12.5"
    assert webui.is_complete(layout, "0.12.4")
    backups = [f for f in os.listdir(layout.backups) if f.endswith(".db")]  # the rollback's exact copy
    assert len(backups) == 1 and backups[0].startswith("webui-0.12.4-")
    assert open(os.path.join(layout.backups, backups[0]), "rb").read() == ORIGINAL_DB
    found = store_backups(layout)  # and a regular backup of all the data, in the store the scheduled ones use
    assert [(b.reason, b.webui_version) for b in found] == [("before-upgrade", "0.12.4")]
    assert open(os.path.join(found[0].path, "data", "webui.db"), "rb").read() == ORIGINAL_DB
    assert found[0].problems and "SQLite could not read it" in found[0].problems[0]  # the double's bytes are no SQLite
    assert open(db_path(layout), "rb").read() == host.migration["0.12.5"]
    # the configured pin did not change: provision keeps the explicitly upgraded version
    host.calls.clear()
    assert provision(layout, host, config()) == 0 and host.serving == "0.12.5"
    assert not [c for c in host.calls if c[0] == "run"]
    # a new pin in the configuration wins
    assert provision(layout, host, config("0.12.6")) == 0 and host.serving == "0.12.6"


def test_failed_start_rolls_back_db_byte_for_byte(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    host.unhealthy.add("0.12.5")
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert host.serving == "0.12.4" and host.active and webui.current_version(layout) == "0.12.4"
    assert open(db_path(layout), "rb").read() == ORIGINAL_DB
    assert "rolled back to 0.12.4" in job(tmp_path)["text"]
    assert not os.path.exists(layout.journal) and not os.path.exists(layout.maintenance)


def test_failed_install_leaves_old_serving(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    host.fail_install.add("0.12.5")
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert "No matching distribution" in job(tmp_path)["text"] and "0.12.4 keeps serving" in job(tmp_path)["text"]
    assert ("stop", "0.12.4") not in host.calls[-3:]
    assert host.serving == "0.12.4" and not os.path.exists(layout.venv("0.12.5"))


@pytest.mark.parametrize("step", ["stop", "backup", "switch", "start"])
@pytest.mark.parametrize("healthy", [True, False])
def test_kill_after_each_step_is_resumed(env, tmp_path, step, healthy):
    layout, host = env
    installed(layout, host, tmp_path)
    if not healthy:
        host.unhealthy.add("0.12.5")

    def hook(at):  # runs once the journal records the step, before the step itself
        if at == step:
            raise Killed(step)
    with pytest.raises(Killed):
        upgrade(layout, host, config(), "0.12.5", hook)
    assert webui.journal(layout).read()["step"] == step
    assert os.path.exists(layout.maintenance)  # left by the killed process (its PID is gone)
    rc = provision(layout, host, config())
    assert not os.path.exists(layout.journal) and not os.path.exists(layout.maintenance)
    assert host.active
    if healthy:
        assert rc == 0 and host.serving == "0.12.5" and webui.current_version(layout) == "0.12.5"
    else:
        assert rc == 1 and host.serving == "0.12.4" and webui.current_version(layout) == "0.12.4"
        assert open(db_path(layout), "rb").read() == ORIGINAL_DB


@pytest.mark.parametrize("where", ["stop", "start"])
def test_kill_during_rollback_is_resumed(env, tmp_path, where):
    layout, host = env
    installed(layout, host, tmp_path)
    host.unhealthy.add("0.12.5")

    def hook(at):
        if at == "rollback":
            host.kill_in = where  # the next systemd call of that kind dies
    with pytest.raises(Killed):
        upgrade(layout, host, config(), "0.12.5", hook)
    assert webui.journal(layout).read()["step"] == "rollback"
    assert provision(layout, host, config()) == 1
    assert host.serving == "0.12.4" and host.active and open(db_path(layout), "rb").read() == ORIGINAL_DB
    assert not os.path.exists(layout.journal)


def test_wal_left_by_a_crash_is_backed_up_and_restored(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    with open(db_path(layout) + "-wal", "wb") as f:
        f.write(b"committed pages")
    host.unhealthy.add("0.12.5")
    assert upgrade(layout, host, config(), "0.12.5") == 1
    assert open(db_path(layout) + "-wal", "rb").read() == b"committed pages"
    assert open(db_path(layout), "rb").read() == ORIGINAL_DB


# ------------------------------------------------------------------------------------ pruning
def test_prune_keeps_current_and_newest(env, tmp_path):
    layout, host = env
    installed(layout, host, tmp_path)
    cfg = config(keep_venvs=2, keep_backups=2)
    for i, v in enumerate(("0.12.5", "0.12.6", "0.12.7")):
        os.utime(os.path.join(layout.venv(webui.current_version(layout)), webui.COMPLETE_MARKER), (i, i))
        assert upgrade(layout, host, cfg, v) == 0
    assert layout.versions() == ["0.12.6", "0.12.7"]
    assert os.path.isdir(layout.uv_cache)  # the installers' cache beside the venvs is no venv to prune
    assert [b.webui_version for b in store_backups(layout)] == ["0.12.5", "0.12.6"]  # webui.keep_backups
    # an unfinished venv that is not current is removed
    os.makedirs(layout.venv("9.9.9"))
    webui.prune(webui.Ctx(cfg, layout, host))
    assert not os.path.exists(layout.venv("9.9.9"))


def test_disabled_stops_only_what_localaid_enabled(env, tmp_path):
    layout, host = env
    assert provision(layout, host, config(enabled=False)) == 0
    assert ("stop", None) not in host.calls  # never enabled by localaid: left alone
    installed(layout, host, tmp_path)
    assert provision(layout, host, config(enabled=False)) == 0
    assert not host.active and not host.enabled and not os.path.exists(layout.enabled_marker)
    assert os.path.exists(db_path(layout)) and webui.is_complete(layout, "0.12.4")


def test_doctor_reports_interrupted_upgrade(env, tmp_path):
    from localaid.records import Check
    layout, host = env
    installed(layout, host, tmp_path)
    webui.journal(layout).write({"to": "0.12.5", "from": "0.12.4", "step": "switch"})
    checks = webui.doctor_checks(config(port=1), layout)
    assert all(isinstance(c, Check) for c in checks)
    by_name = {c.name: c for c in checks}
    assert by_name["open-webui upgrade"].ok is False and "switch" in by_name["open-webui upgrade"].message
    assert by_name["open-webui venv"].ok is True
    assert by_name["open-webui environment file"].ok is True
    assert by_name["open-webui http"].ok is False


def test_uv_path_bootstraps_uv_and_translates_pip_configuration(env, tmp_path):
    layout, host = env
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    host.pip_conf_lines = ["global.no-index='true'", f"global.find-links='{wheels}'"]
    cfg = dataclasses.replace(config(), webui=dataclasses.replace(config().webui, installer="auto"))
    assert provision(layout, host, cfg) == 0
    runs = [c[1] for c in host.calls if c[0] == "run"]
    uv = os.path.join(layout.tools, "bin", "uv")
    assert any(r[-1] == "uv" and r[0] == os.path.join(layout.tools, "bin", "python") for r in runs)
    install = next(r for r in runs if r[0] == uv)
    assert install[1:5] == ("pip", "install", "--python", os.path.join(layout.venv("0.12.4"), "bin", "python"))
    assert install[5:] == ("--no-index", "--no-build", "--override", layout.overrides,
                           "open-webui==0.12.4")  # wheels only, and no torch (webui.torch: false)
    assert "torch; sys_platform == 'never'" in open(layout.overrides).read()
    assert stat.S_IMODE(os.stat(layout.overrides).st_mode) == 0o644  # root's: the build unit only reads it  # wheels only by default
    unit = next(u for u in host.units if u["argv"][0] == uv)
    assert unit["env"]["UV_FIND_LINKS"] == str(wheels)  # where packages come from: the environment
    assert unit["env"]["PIP_NO_INDEX"] == "true" and unit["env"]["PIP_FIND_LINKS"] == str(wheels)
    marker = json.load(open(os.path.join(layout.venv("0.12.4"), webui.COMPLETE_MARKER)))
    assert marker["installer"] == "uv" and host.serving == "0.12.4" and marker["wheels_only"] is True


def test_uv_path_seeds_venv_with_ensurepips_wheels_and_bootstraps_uv_without_a_venv(env, tmp_path):
    layout, host = env
    wheels = ("/usr/share/python-wheels/pip-23.0.1-py3-none-any.whl",
              "/usr/share/python-wheels/setuptools-66.1.1-py3-none-any.whl")
    host.seed = webui.Seed(wheels, has_pip=False)
    host.pip_conf_lines = ["global.no-index='true'"]
    cfg = dataclasses.replace(config(), webui=dataclasses.replace(config().webui, installer="auto"))
    assert provision(layout, host, cfg) == 0
    runs = [c[1] for c in host.calls if c[0] == "run"]
    venv = layout.venv("0.12.4")
    python, uv, pip = os.path.join(venv, "bin", "python"), os.path.join(layout.tools, "bin", "uv"), \
        ("/usr/bin/python3", os.path.join(wheels[0], "pip"))
    assert ("/usr/bin/python3", "-m", "venv", venv, "--without-pip") in runs
    assert not any(r[1:3] == ("-m", "venv") and r[3] == layout.tools for r in runs)  # no tools venv
    assert (*pip, "install", "--quiet", "--no-warn-script-location", "--target", layout.tools,
            "--only-binary", ":all:", "uv") in runs
    assert (*pip, "config", "list") in runs
    seed = (uv, "pip", "install", "--quiet", "--python", python, "--no-index", "--no-deps", *wheels)
    install = (uv, "pip", "install", "--python", python, "--no-index", "--no-build",
               "--override", layout.overrides, "open-webui==0.12.4")
    assert runs.index(seed) < runs.index(install)
    site = os.path.join(venv, "lib", "python3.11", "site-packages")
    assert os.path.isdir(os.path.join(site, "pip-0.dist-info"))
    marker = json.load(open(os.path.join(venv, webui.COMPLETE_MARKER)))
    assert marker["installer"] == "uv" and {"setup", "seed", "install", "pip_config"} <= set(marker["phases"])
    assert host.serving == "0.12.4"


def test_no_uv_after_a_venv_without_pip_rebuilds_it_with_pip(env, tmp_path):
    layout, host = env
    host.seed = webui.Seed(("/w/pip-23.0.1-py3-none-any.whl",), has_pip=True)
    real_run = host.run

    def run(argv, **kw):
        if argv[-1] == "uv":
            host.calls.append(("run", tuple(argv)))
            return Result(1, ("ERROR: No matching distribution found for uv",))
        return real_run(argv, **kw)
    host.run = run
    cfg = dataclasses.replace(config(), webui=dataclasses.replace(config().webui, installer="auto"))
    assert provision(layout, host, cfg) == 0
    runs = [c[1] for c in host.calls if c[0] == "run"]
    venv = layout.venv("0.12.4")
    made = [r for r in runs if r[1:4] == ("-m", "venv", venv)]
    assert made == [("/usr/bin/python3", "-m", "venv", venv, "--without-pip"), ("/usr/bin/python3", "-m", "venv", venv)]
    assert runs[-1][:4] == (os.path.join(venv, "bin", "python"), "-m", "pip", "install")
    marker = json.load(open(os.path.join(venv, webui.COMPLETE_MARKER)))
    assert marker["installer"] == "pip" and webui.current_version(layout) == "0.12.4"


def test_a_data_dir_elsewhere(env, tmp_path, monkeypatch):
    """webui.data_dir outside /var: open-webui's drop-in names it, the set-up unit gets a drop-in
    that makes and opens it for its sandbox; a run that finds it read-only says so."""
    layout, host = env
    cfg = config(data_dir="/srv/owui")
    assert provision(layout, host, cfg) == 0
    assert oct(os.stat(layout.p("/srv/owui")).st_mode & 0o777) == "0o700"
    assert "WorkingDirectory=/srv/owui" in open(layout.dropin).read()
    assert "ReadWritePaths=-/srv/owui\n" in open(layout.setup_dropin).read()
    assert "DATA_DIR=/srv/owui" in open(layout.env_file).read()
    os.unlink(layout.setup_dropin)
    os.rmdir(layout.p("/srv/owui"))
    from localaid.provision.webui import service

    def read_only(*a, **kw):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(service.safefs, "ensure_dir", read_only)
    host.calls.clear()
    assert provision(layout, host, cfg) == 1
    assert "read-only" in job(tmp_path)["text"]
    assert "ReadWritePaths=-/srv\n" in open(layout.setup_dropin).read()  # to make the dir next time
    assert ("daemon-reload",) in host.calls
    monkeypatch.undo()
    assert provision(layout, host, config()) == 0  # back to the default dir: the drop-in goes
    assert not os.path.exists(layout.setup_dropin) and not os.path.exists(layout.dropin)


# ------------------------------------------------------------------------ managed interpreter
def debian13(**kw) -> Config:
    """python: auto and installer: auto, on a host whose python3 is 3.13 (host.python)."""
    c = config(**kw)
    return dataclasses.replace(c, webui=dataclasses.replace(c.webui, python="auto", installer="auto"))


def test_debian13_gets_a_python_from_uv_once_root_owned_and_reused(env, tmp_path):
    layout, host = env
    host.python = (3, 13, 5)
    cfg = debian13()
    cfg = dataclasses.replace(cfg, webui=dataclasses.replace(cfg.webui, managed_python=dataclasses.replace(
        cfg.webui.managed_python, downloads_json="file:///srv/python/downloads.json")))
    assert provision(layout, host, cfg) == 0
    base = layout.p("/var/lib/localaid/python")
    exe = os.path.join(base, "cpython-3.11.2-linux-x86_64-gnu", "bin", "python3.11")
    down = next(u for u in host.units if u["argv"][1:3] == ["python", "install"])
    assert down["argv"][0] == os.path.join(layout.tools, "bin", "uv") and down["argv"][-1] == "3.11"
    assert down["env"]["UV_PYTHON_DOWNLOADS_JSON_URL"] == "file:///srv/python/downloads.json"
    assert down["env"]["UV_PYTHON_INSTALL_BIN"] == "0"  # nothing in the service user's ~/.local/bin
    assert "User=open-webui" in down["props"]  # downloaded code never runs as root
    st = os.lstat(exe)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o755  # set-id, group write dropped
    assert os.readlink(os.path.join(os.path.dirname(exe), "python3")) == "python3.11"
    assert not os.path.exists(os.path.join(layout.cache, "python"))  # the staging copy is gone
    venv = layout.venv("0.12.4")
    assert (exe, "-m", "venv", venv) in [c[1] for c in host.calls if c[0] == "run"]
    assert not any(c[1][0] == exe for c in host.calls if c[0] == "run" and "-m" not in c[1]
                   and c[1][1:2] != ("-c",))
    marker = json.load(open(os.path.join(venv, webui.COMPLETE_MARKER)))
    assert marker["python"] == exe and marker["managed_python"] is True
    assert json.load(open(os.path.join(base, "installed.json")))["version"] == "3.11.2"
    # an upgrade reuses it: no second download
    assert upgrade(layout, host, debian13(), "0.12.5") == 0
    assert sum(1 for u in host.units if u["argv"][1:3] == ["python", "install"]) == 1
    assert (exe, "-m", "venv", layout.venv("0.12.5")) in [c[1] for c in host.calls if c[0] == "run"]
    # the upgrade's build compiles the byte code while 0.12.4 serves; the first install did not
    installs = [u["argv"] for u in host.units if u["argv"][1:3] == ["pip", "install"] and u["argv"][-1].startswith(
        "open-webui==")]
    assert [("--compile-bytecode" in a, a[-1]) for a in installs] == [(False, "open-webui==0.12.4"),
                                                                    (True, "open-webui==0.12.5")]


def test_ubuntu_24_04s_python_3_12_runs_open_webui_without_a_download(env, tmp_path):
    """Ubuntu 24.04's python3 is 3.12.3; open-webui 0.12.3 and 0.12.4 declare Requires-Python
    <3.13.0a1,>=3.11 (their wheels' METADATA): webui.python auto builds with the system's."""
    layout, host = env
    host.python = (3, 12, 3)
    assert provision(layout, host, debian13()) == 0
    assert not any(u["argv"][1:3] == ["python", "install"] for u in host.units)  # no download
    venv = layout.venv("0.12.4")
    assert ("/usr/bin/python3", "-m", "venv", venv) in [c[1] for c in host.calls if c[0] == "run"]
    marker = json.load(open(os.path.join(venv, webui.COMPLETE_MARKER)))
    assert marker["python"] == "/usr/bin/python3" and marker["managed_python"] is False
    assert not os.path.exists(layout.p("/var/lib/localaid/python"))


def test_a_link_out_of_the_downloaded_tree_is_refused(env, tmp_path):
    layout, host = env
    host.python = (3, 13, 5)
    host.planted_link = "/etc/shadow"
    assert provision(layout, host, debian13()) == 1
    assert "refusing the interpreter uv installed" in job(tmp_path)["text"]
    assert not os.path.exists(layout.p("/var/lib/localaid/python/cpython-3.11.2-linux-x86_64-gnu"))


def test_an_explicit_python_that_cannot_run_open_webui_blocks_the_job(env, tmp_path):
    layout, host = env
    host.python = (3, 13, 5)
    cfg = dataclasses.replace(config(), webui=dataclasses.replace(config().webui, python="/usr/bin/python3.13"))
    assert provision(layout, host, cfg) == 1
    p = job(tmp_path)
    assert p["state"] == "blocked" and p["text"] == "needs Python 3.11 or 3.12, see localaid doctor"
    assert not any(u["argv"][1:3] == ["python", "install"] for u in host.units)  # never a download



def test_embedding_settings_stored_by_an_earlier_start_are_brought_to_the_configuration(env, tmp_path):
    """Open WebUI seeds its settings from the environment at its first start only: an install
    from before localaid set RAG_EMBEDDING_* keeps the local engine until it is told otherwise."""
    layout, host = env
    assert provision(layout, host, config()) == 0
    assert host.admin.updates == [("ollama", "nomic-embed-text:latest", "http://127.0.0.1:11434")]
    assert provision(layout, host, config()) == 0
    assert len(host.admin.updates) == 1  # already as configured: nothing written
    host.admin.refuse = "admin sign-in refused (HTTP 400)"
    assert provision(layout, host, config()) == 0  # a warning, never a failed job
    assert len(host.admin.updates) == 1 and job(tmp_path)["state"] == "done"


def with_models(cfg, *names, auto=False):
    """cfg with ollama.models as a list, or as an auto pick of names[0] (as config.load gives it)."""
    from localaid import modelchoice
    from localaid.catalog import Pick
    from localaid.config import ModelSpec
    if auto:
        return modelchoice.applied(cfg, Pick(names[0], "test", "no GPU"))
    return dataclasses.replace(cfg, ollama=dataclasses.replace(cfg.ollama, models_auto=False,
                                                               models=tuple(ModelSpec(n) for n in names)))


def test_the_picked_model_becomes_open_webuis_default_for_new_chats(env, tmp_path):
    layout, host = env
    assert provision(layout, host, config()) == 0  # auto, nothing picked yet: nothing to set
    assert host.admin.default_updates == []
    assert provision(layout, host, with_models(config(), "qwen3:1.7b", auto=True)) == 0
    assert host.admin.default_updates == ["qwen3:1.7b"] and host.admin.default_models == "qwen3:1.7b"
    assert provision(layout, host, with_models(config(), "qwen3:1.7b", auto=True)) == 0
    assert host.admin.default_updates == ["qwen3:1.7b"]  # already so: nothing written
    # a list: its first model; the default localaid wrote follows it
    assert provision(layout, host, with_models(config(), "deepseek-r1:8b", "llama3.2:3b")) == 0
    assert host.admin.default_updates == ["qwen3:1.7b", "deepseek-r1:8b"]


def test_a_default_model_the_admin_chose_in_open_webui_is_kept(env, tmp_path):
    layout, host = env
    host.admin.default_models = "llama3.2:3b"  # chosen in Open WebUI's settings
    assert provision(layout, host, with_models(config(), "qwen3:1.7b", auto=True)) == 0
    assert host.admin.default_updates == [] and host.admin.default_models == "llama3.2:3b"
    assert job(tmp_path)["state"] == "done"
    host.admin.refuse = "admin sign-in refused (HTTP 400)"
    assert provision(layout, host, with_models(config(), "qwen3:4b", auto=True)) == 0  # a warning only
    assert job(tmp_path)["state"] == "done"
