"""Pure pieces of localaid.provision.webui: environment file, interpreter check, installer
output, pip configuration for uv, unit files."""

import configparser
import errno
import io
import dataclasses
import os
import re
import sys
from pathlib import Path

from localaid.config import Config, FrozenMap, WebUIConfig
from localaid import log
from localaid.provision import webui
from localaid.provision.webui import installer, venv

REPO = Path(__file__).resolve().parents[2]


def cfg(**webui_kw) -> Config:
    return dataclasses.replace(Config(), webui=dataclasses.replace(WebUIConfig(), **webui_kw))


def parse_env(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= rules for what env_quote writes: bare, or "..." with \\-escapes."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if value.startswith('"'):
            assert value.endswith('"') and len(value) >= 2, line
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        else:
            assert not re.search(r"[\s\"'\\$`]", value), line
        out[key] = value
    return out


def test_env_file_has_everything_and_round_trips():
    c = cfg(port=3123, host="0.0.0.0", data_dir="/srv/owui",
            environment=FrozenMap({"WEIRD": 'a "b" $HOME `x` \\ c', "OFFLINE_MODE": "false"}))
    env = parse_env(webui.render_env(c, "k3y", "pw$1"))
    assert env["DATA_DIR"] == "/srv/owui" and env["HOST"] == "0.0.0.0" and env["PORT"] == "3123"
    assert env["OLLAMA_BASE_URL"] == c.ollama.url
    assert env["WEBUI_SECRET_KEY"] == "k3y"
    assert env["WEBUI_ADMIN_EMAIL"] == "admin@localhost" and env["WEBUI_ADMIN_PASSWORD"] == "pw$1"
    assert env["SCARF_NO_ANALYTICS"] == "true" and env["DO_NOT_TRACK"] == "true"
    assert env["ANONYMIZED_TELEMETRY"] == "false" and env["HF_HUB_OFFLINE"] == "1"
    assert env["WEIRD"] == 'a "b" $HOME `x` \\ c'
    assert env["OFFLINE_MODE"] == "false"  # webui.environment overrides localaid's defaults


def test_env_without_password_has_no_password_line():
    assert "WEBUI_ADMIN_PASSWORD" not in webui.render_env(cfg(), "k", None)


def test_dropin_only_when_needed():
    assert webui.render_dropin(cfg(), []) == ""
    d = webui.render_dropin(cfg(data_dir="/srv/owui", gpu=True), ["video", "render"])
    assert "WorkingDirectory=/srv/owui" in d and "ReadWritePaths=/srv/owui" in d
    assert "DeviceAllow=char-nvidia* rw" in d and "SupplementaryGroups=video render" in d
    assert "PrivateDevices=no" in d


def test_a_data_dir_outside_var_is_added_to_the_setup_unit():
    assert webui.render_setup_dropin(cfg()) == "" and webui.render_setup_dropin(cfg(data_dir="/var/owui")) == ""
    d = webui.render_setup_dropin(cfg(data_dir="/srv/open webui/100%"))
    assert 'ReadWritePaths=-"/srv/open webui/100%%"' in d  # quoted, specifier escaped
    assert "ReadWritePaths=-/srv\n" in webui.render_setup_dropin(cfg(data_dir="/srv/owui"), "/srv")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(d)
    assert unit["Service"]["ReadWritePaths"] == '-"/srv/open webui/100%%"'


def test_python_check_messages():
    assert webui.python_problem("/usr/bin/python3", (3, 11, 2), "0.12.4") is None
    assert webui.python_problem("/usr/bin/python3", (3, 12, 9), "0.12.4") is None
    msg = webui.python_problem("/usr/bin/python3", (3, 13, 5), "0.12.4")
    assert "Python 3.13.5" in msg and "3.11 or 3.12" in msg and "webui.python" in msg and "Debian 13" in msg
    assert "3.10" in webui.python_problem("/usr/bin/python3", (3, 10, 12), "0.12.4")
    assert "cannot be run" in webui.python_problem("/opt/py/bin/python3.12", None, "0.12.4")


def test_installer_progress_counts():
    st = {}
    assert webui.installer_progress("Resolved 261 packages in 2.31s", st) == "resolved 261 packages"
    assert webui.installer_progress("Prepared 261 packages in 20.1s", st) == "prepared 261 packages"
    assert webui.installer_progress("Installed 261 packages in 3.2s", st) == "installed 261 packages"
    assert st == {"resolved": 261, "prepared": 261, "installed": 261}
    st = {}
    webui.installer_progress("Collecting open-webui==0.12.4", st)
    assert webui.installer_progress("Collecting fastapi", st) == "collecting packages (2)"
    assert webui.installer_progress("Installing collected packages: a, b, c", st) == "installing 3 packages"
    assert webui.installer_progress("Successfully installed a-1 b-2 c-3", st) == "installed 3 packages"
    assert webui.installer_progress("  Downloading x.whl (1 MB)", st) is None


def test_uv_args_translate_pip_configuration(tmp_path):
    constraint = tmp_path / "c.txt"
    constraint.write_text("torch<=2\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pipconf = {"index-url": "https://mirror.example/simple",
               "extra-index-url": f"file://{tmp_path}/missing https://extra.example/simple",
               "find-links": f"{wheels} /nonexistent/wheels",
               "constraint": str(constraint), "cert": "/etc/my-ca.pem", "trusted-host": "mirror.example",
               "timeout": "180"}
    args, env = webui.uv_args(cfg(), pipconf)
    assert args == ["--index-url", "https://mirror.example/simple",
                    "--extra-index-url", "https://extra.example/simple",
                    "--index-strategy", "unsafe-best-match",
                    "--find-links", str(wheels), "--constraint", str(constraint),
                    "--allow-insecure-host", "mirror.example"]
    assert env["SSL_CERT_FILE"] == "/etc/my-ca.pem" and env["UV_HTTP_TIMEOUT"] == "180"
    # localaid's own keys win over the machine's pip configuration
    args, _ = webui.uv_args(cfg(index_url="https://own.example/simple", find_links=("/w",)), pipconf)
    assert args[:2] == ["--index-url", "https://own.example/simple"] and "--find-links" not in args
    args, _ = webui.uv_args(cfg(find_links=(str(wheels),)), {"no-index": "true"})
    assert args == ["--no-index", "--find-links", str(wheels)]


def test_pip_args_only_own_keys():
    assert webui.pip_args(cfg()) == []
    assert webui.pip_args(cfg(index_url="https://i/simple", extra_index_urls=("https://e/simple",),
                              find_links=("/w",))) == \
        ["--index-url", "https://i/simple", "--extra-index-url", "https://e/simple", "--find-links", "/w"]


def test_last_line_of_installer_output():
    assert installer.last_error(["Collecting x", "ERROR: No matching distribution found for open-webui==9"]) == \
        "ERROR: No matching distribution found for open-webui==9"
    uv = ["error: Request failed after 3 retries", "  Caused by: Failed to fetch: http://127.0.0.1:9/simple/",
          "  Caused by: Connection refused (os error 111)"]
    assert installer.last_error(uv) == "error: Request failed after 3 retries (Caused by: Connection refused (os error 111))"
    assert installer.last_error(["OSError: [Errno 28] No space left on device: '/x'", "subprocess failed"]) == \
        "No space left on device"


def _unit(name: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str
    p.read_string((REPO / "units" / name).read_text())
    return p


def test_service_unit_contract():
    u = _unit("open-webui.service")
    s = u["Service"]
    assert s["User"] == webui.SERVICE_USER
    assert s["EnvironmentFile"] == webui.ENV_FILE
    assert s["ExecStart"] == "/var/lib/localaid/webui/current/bin/open-webui serve --host ${HOST} --port ${PORT}"
    assert s["WorkingDirectory"] == webui.UNIT_DATA_DIR
    assert s["Restart"] == "always" and s["RestartSec"] == "2"
    assert "/var/lib/open-webui" in s["ReadWritePaths"] and s["PrivateDevices"] == "yes"
    assert "-/var/lib/open-webui" in s["ReadWritePaths"].split()  # missing with another webui.data_dir
    assert u["Install"]["WantedBy"] == "multi-user.target"
    setup = _unit("localaid-webui-setup.service")
    assert setup["Service"]["Type"] == "oneshot"
    assert setup["Service"]["ExecStart"] == "/usr/bin/localaid provision webui"
    assert "network-online.target" in setup["Unit"]["After"]


def test_venv_version_reads_dist_info(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "open_webui-0.12.4.dist-info").mkdir(parents=True)
    (site / "fastapi-0.1.dist-info").mkdir()
    assert webui.venv_version(str(tmp_path)) == "0.12.4"
    assert webui.venv_version(str(tmp_path / "nope")) is None


def test_layout_under_a_root(tmp_path):
    lay = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    assert lay.current == f"{tmp_path}/var/lib/localaid/webui/current"
    assert lay.env_file == f"{tmp_path}/etc/localaid/open-webui.env"
    assert lay.maintenance == f"{tmp_path}/run/localaid/maintenance/open-webui"
    os.makedirs(lay.venvs)
    webui.switch_current(lay, "0.12.4")
    assert os.readlink(lay.current) == "venvs/0.12.4" and webui.current_version(lay) == "0.12.4"
    webui.switch_current(lay, "0.12.5")
    assert webui.current_version(lay) == "0.12.5"
    webui.switch_current(lay, None)
    assert webui.current_version(lay) is None


def test_setup_unit_keeps_uvs_cache_linkable():
    """CacheDirectory= in a unit with a mount namespace bind-mounts /var/cache/localaid: uv's hard
    links into /var/lib/localaid then fail with EXDEV and it copies every file (measured 25 s vs 1 s)."""
    s = _unit("localaid-webui-setup.service")["Service"]
    assert "CacheDirectory" not in s
    # ProtectSystem=strict: the caches and the venvs must be in one writable mount (one entry
    # above both), not one bind mount each
    assert s["ProtectSystem"] == "strict"
    writable = [p.lstrip("-") for p in s["ReadWritePaths"].split()]
    assert [p for p in writable if "/var/lib/localaid/webui/venvs".startswith(p + "/")] == \
        [p for p in writable if "/var/cache/localaid/uv".startswith(p + "/")] == ["/var"]
    assert "/etc" in writable and "/run/localaid" in writable  # useradd; progress and maintenance
    assert "localaid-ollama-setup.service" not in _unit("localaid-webui-setup.service")["Unit"]["After"]


def test_link_probe_asks_uv_to_copy_across_mounts(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    lay = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    os.makedirs(lay.p(webui.UV_CACHE))
    os.makedirs(lay.venvs)
    monkeypatch.delenv("UV_LINK_MODE", raising=False)
    ctx = webui.Ctx(config=None, layout=lay)
    assert venv.link_env(ctx) == {} and ctx.link_ok is True
    assert os.listdir(lay.p(webui.UV_CACHE)) == [] and os.listdir(lay.venvs) == []

    def exdev(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", exdev)
    ctx = webui.Ctx(config=None, layout=lay)
    assert venv.link_env(ctx) == {"UV_LINK_MODE": "copy"}
    assert "copies every file" in out.getvalue()
    assert os.listdir(lay.p(webui.UV_CACHE)) == []


def test_uv_summary_lines_and_durations():
    m = installer.UV_SUMMARY.match("Prepared 262 packages in 34.11s")
    assert m and m.group(1) == "Prepared" and installer.uv_seconds(m.group(2)) == 34.11
    assert installer.uv_seconds("953ms") == 0.95 and installer.uv_seconds("1m 03s") == 63
    assert installer.UV_SUMMARY.match(" + torch==2.14.1") is None


def test_seed_probe_finds_ensurepips_wheels():
    seed = webui.Host().seed_wheels(sys.executable)
    assert all(os.path.isfile(w) and w.endswith(".whl") for w in seed.wheels)
    if seed.wheels:
        assert os.path.basename(seed.wheels[0]).startswith("pip-") and seed.pip_wheel == seed.wheels[0]
        assert seed.pip("/py") in (["/py", "-m", "pip"], ["/py", os.path.join(seed.wheels[0], "pip")])
    assert webui.Host().seed_wheels("/nonexistent/python") == webui.Seed()
    assert webui.Seed().pip("/py") is None
    assert webui.Seed(("/w/pip-1-py3-none-any.whl",)).pip("/py") == ["/py", "/w/pip-1-py3-none-any.whl/pip"]
