"""Pure pieces of localaid.provision.webui: environment file, interpreter check, installer
output, pip configuration for uv, unit files."""

import configparser
import dataclasses
import os
import re
import sys
from pathlib import Path

from localaid.config import Config, FrozenMap, WebUIConfig
from localaid.provision import webui
from localaid.provision.webui import installer, sandbox, venv

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


def test_documents_are_embedded_by_ollama_by_default_and_nothing_comes_from_a_hub():
    c = cfg()
    env = parse_env(webui.render_env(c, "k", None))
    assert env["RAG_EMBEDDING_ENGINE"] == "ollama" and env["RAG_EMBEDDING_MODEL"] == "nomic-embed-text:latest"
    assert env["RAG_OLLAMA_BASE_URL"] == c.ollama.url == "http://127.0.0.1:11434"
    assert env["HF_HUB_OFFLINE"] == "1" and env["OFFLINE_MODE"] == "true"
    # the embedding model is pulled like the configured ones, loaded only when used
    assert [(m.name, m.keep_warm) for m in c.wanted_models] == [("nomic-embed-text:latest", False)]


def test_the_local_engine_is_open_webuis_own_model_from_the_hub():
    from localaid.config.keys import EmbeddingConfig
    c = cfg(embedding=EmbeddingConfig(engine="local"))
    env = parse_env(webui.render_env(c, "k", None))
    assert "RAG_EMBEDDING_ENGINE" not in env and "HF_HUB_OFFLINE" not in env and "OFFLINE_MODE" not in env
    assert env["RAG_EMBEDDING_MODEL"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert c.wanted_models == ()  # Ollama is not asked for it


def test_an_embedding_model_listed_in_ollama_models_is_pulled_once():
    from localaid.config.keys import EmbeddingConfig, OllamaConfig
    from localaid.config.values import ModelSpec
    c = cfg(embedding=EmbeddingConfig(model="mxbai-embed-large"))
    c = dataclasses.replace(c, ollama=OllamaConfig(models=(ModelSpec("mxbai-embed-large:latest"),)))
    assert c.wanted_models == (ModelSpec("mxbai-embed-large:latest"),)
    assert parse_env(webui.render_env(c, "k", None))["RAG_EMBEDDING_MODEL"] == "mxbai-embed-large:latest"
    assert dataclasses.replace(c, webui=dataclasses.replace(c.webui, enabled=False)).wanted_models == \
        c.ollama.models  # no Open WebUI on this host: nothing to embed for


def test_a_ui_host_gives_open_webui_its_nodes():
    from localaid.config.keys import OllamaConfig
    c = cfg(ollama_urls=("http://gpu-a:11434", "http://gpu-b:11434"))
    c = dataclasses.replace(c, ollama=OllamaConfig(enabled=False))
    env = parse_env(webui.render_env(c, "k", None))
    assert env["OLLAMA_BASE_URLS"] == "http://gpu-a:11434;http://gpu-b:11434" and "OLLAMA_BASE_URL" not in env
    assert env["RAG_OLLAMA_BASE_URL"] == "http://gpu-a:11434"
    assert c.wanted_models == ()  # no local Ollama to pull into


def test_env_without_password_has_no_password_line():
    assert "WEBUI_ADMIN_PASSWORD" not in webui.render_env(cfg(), "k", None)


def test_dropin_only_when_needed():
    assert webui.render_dropin(cfg(), []) == ""
    d = webui.render_dropin(cfg(data_dir="/srv/owui", gpu=True), ["video", "render"])
    assert "WorkingDirectory=/srv/owui" in d and "ReadWritePaths=/srv/owui" in d
    assert "DeviceAllow=char-nvidia* rw" in d and "SupplementaryGroups=video render" in d
    assert "PrivateDevices=no" in d


def test_a_data_dir_elsewhere_is_added_to_the_setup_unit():
    assert webui.render_setup_dropin(cfg()) == ""
    assert webui.render_setup_dropin(cfg(), "/var/lib/open-webui") == ""
    # the unit may write /var/lib/open-webui only: anything else, under /var too, needs the drop-in
    assert "ReadWritePaths=-/var/owui\n" in webui.render_setup_dropin(cfg(data_dir="/var/owui"))
    assert "ReadWritePaths=-/var/lib\n" in webui.render_setup_dropin(cfg(), "/var/lib")  # to make it first
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
    assert "Python 3.13.5" in msg and "3.11 or 3.12" in msg and "webui.python" in msg and "auto" in msg
    assert "3.10" in webui.python_problem("/usr/bin/python3", (3, 10, 12), "0.12.4")
    assert "cannot be run" in webui.python_problem("/opt/py/bin/python3.12", None, "0.12.4")


def test_the_python_range_is_open_webuis_own():
    """open-webui 0.12.3 and 0.12.4's wheels say Requires-Python: <3.13.0a1,>=3.11 (read from their
    METADATA in the real-webui wheel cache); the double the tests install declares the same range,
    and Ubuntu 24.04's 3.12.3 is inside it."""
    import tomllib
    fake = tomllib.loads((REPO / "tests/fakes/open_webui/pyproject.toml").read_text())["project"]
    assert fake["requires-python"] == f">={installer.PYTHON_MIN[0]}.{installer.PYTHON_MIN[1]}," \
                                      f"<{installer.PYTHON_MAX[0]}.{installer.PYTHON_MAX[1]}"
    assert webui.python_problem("/usr/bin/python3", (3, 12, 3), "0.12.4") is None


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
               "find-links": f"{wheels} /nonexistent/wheels https://w.example/links",
               "constraint": str(constraint), "cert": "/etc/my-ca.pem", "trusted-host": "mirror.example",
               "timeout": "180"}
    args, env = webui.uv_args(cfg(), pipconf)
    # no index or wheel place on the command line (they may hold credentials): uv reads them from
    # its environment; what is no secret stays an option
    assert args == ["--index-strategy", "unsafe-best-match", "--constraint", str(constraint),
                    "--allow-insecure-host", "mirror.example", "--no-build"]
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["UV_EXTRA_INDEX_URL"] == "https://extra.example/simple"  # a missing file:// index dropped
    assert env["UV_FIND_LINKS"] == f"{wheels},https://w.example/links"  # comma-separated, as uv reads it
    assert env["SSL_CERT_FILE"] == "/etc/my-ca.pem" and env["UV_HTTP_TIMEOUT"] == "180"
    # localaid's own keys win over the machine's pip configuration
    args, env = webui.uv_args(cfg(index_url="https://own.example/simple", find_links=("/w",)), pipconf)
    assert env["UV_INDEX_URL"] == "https://own.example/simple"
    assert "UV_FIND_LINKS" not in env  # /w is missing
    args, env = webui.uv_args(cfg(find_links=(str(wheels),), allow_source_builds=True), {"no-index": "true"})
    assert args == ["--no-index"] and env["UV_FIND_LINKS"] == str(wheels) and "UV_INDEX_URL" not in env


def test_pip_env_carries_the_machines_configuration_and_own_keys():
    machine = {"index-url": "https://m.example/simple", "extra-index-url": "https://e1.example/simple",
               "find-links": "/opt/wheels", "no-index": "false", "constraint": "/etc/c.txt"}
    assert webui.pip_env(cfg(), machine) == {
        "PIP_INDEX_URL": "https://m.example/simple", "PIP_EXTRA_INDEX_URL": "https://e1.example/simple",
        "PIP_FIND_LINKS": "/opt/wheels", "PIP_NO_INDEX": "false", "PIP_CONSTRAINT": "/etc/c.txt"}
    env = webui.pip_env(cfg(index_url="https://i/simple", extra_index_urls=("https://e/simple",),
                            find_links=("/w",), no_index=True), machine)
    assert env["PIP_INDEX_URL"] == "https://i/simple"  # replaces the machine's
    assert env["PIP_EXTRA_INDEX_URL"] == "https://e1.example/simple https://e/simple"  # adds to it, as pip does
    assert env["PIP_FIND_LINKS"] == "/opt/wheels /w" and env["PIP_NO_INDEX"] == "1"
    assert webui.pip_flags(cfg()) == ["--only-binary", ":all:"]
    assert webui.pip_flags(cfg(allow_source_builds=True)) == []


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


def test_setup_unit_writes_only_what_the_job_writes():
    """No /etc but localaid's and the drop-ins (the package makes the user), no /var but the state,
    the data dir and the old caches; no CAP_SETUID/SETGID: installers run in units of their own,
    started by PID 1 as the service user. CacheDirectory= stays out (its bind mount broke uv's
    hard links; the caches live beside the venvs now)."""
    s = _unit("localaid-webui-setup.service")["Service"]
    assert "CacheDirectory" not in s and s["ProtectSystem"] == "strict"
    writable = s["ReadWritePaths"].split()
    assert writable == ["/etc/localaid", "/etc/systemd/system", "-/var/lib/open-webui", "-/var/cache/localaid"]
    assert s["StateDirectory"] == "localaid" and s["RuntimeDirectory"] == "localaid"
    assert s["RuntimeDirectoryPreserve"] == "yes"  # shared with localaid.service
    caps = set(s["CapabilityBoundingSet"].split())
    assert caps == {"CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"}
    assert "localaid-ollama-setup.service" not in _unit("localaid-webui-setup.service")["Unit"]["After"]
    # the web app cannot reach the installers' cache (it could not gain from it: builds run as it)
    hidden = _unit("open-webui.service")["Service"]["InaccessiblePaths"].split()
    assert "-/var/lib/localaid/webui/venvs/.cache" in hidden


def test_build_units_write_the_new_venv_and_the_caches_only(tmp_path):
    lay = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    for v in ("0.12.4", "0.12.5"):
        os.makedirs(lay.venv(v))
    os.makedirs(lay.uv_cache)
    ctx = webui.Ctx(config=cfg(), layout=lay)
    j = venv.venv_jail(ctx, "0.12.5")
    assert j.unit == "localaid-webui-build-venv-0.12.5.service" and j.user == "open-webui"
    # one writable mount above the new venv and uv's cache (hard links between them), the other
    # venv read-only in it, the data dir out of sight
    assert j.writable == (lay.venvs,) and lay.uv_cache.startswith(lay.venvs + "/")
    assert j.readonly == (lay.venv("0.12.4"),) and j.hidden == (ctx.data_dir(),)
    assert j.env_file.startswith(lay.build_env_dir + "/")
    props = sandbox.properties(j, 1800)
    for p in ("User=open-webui", "Group=open-webui", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
              "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "RuntimeMaxSec=1830s",
              f"ReadWritePaths={lay.venvs}", f"ReadOnlyPaths=-{lay.venv('0.12.4')}",
              f"InaccessiblePaths=-{ctx.data_dir()}", f"EnvironmentFile={j.env_file}"):
        assert p in props, p
    assert [p for p in props if p.startswith("ReadWritePaths=")] == [f"ReadWritePaths={lay.venvs}"]
    argv = sandbox.command(j, ["/bin/true"], 60)
    assert argv[:7] == ["systemd-run", f"--unit={j.unit}", "--quiet", "--wait", "--pipe", "--collect",
                        "--service-type=exec"] and argv[-2:] == ["--", "/bin/true"]
    uv = venv.jail(ctx, "uv", [lay.tools, lay.pip_cache])
    assert uv.writable == (lay.tools, lay.pip_cache) and uv.readonly == ()
    assert sandbox.unit_name("venv-1.0+cpu/x") == "localaid-webui-build-venv-1.0_cpu_x.service"


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


def test_doctor_on_a_ui_host_says_which_models_have_no_failover():
    from localaid.adapters.ollama import OllamaError
    from localaid.config.keys import OllamaConfig
    from localaid.config.values import ModelSpec
    from localaid.provision.webui.nodes import node_checks
    tags = {"http://gpu-a:11434": ["llama3:latest", "nomic-embed-text:latest", "qwen2.5:7b"],
            "http://gpu-b:11434": ["llama3:latest"], "http://gpu-c:11434": None}

    class Client:
        def __init__(self, url):
            self.url = url

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def tags(self):
            if tags[self.url] is None:
                raise OllamaError("cannot connect: Connection refused")
            return [type("M", (), {"name": n})() for n in tags[self.url]]
    c = cfg(ollama_urls=tuple(tags))
    c = dataclasses.replace(c, ollama=OllamaConfig(enabled=False, models=(
        ModelSpec("llama3:latest"), ModelSpec("qwen2.5:7b"), ModelSpec("mistral:latest"))))
    got = {ch.name: (ch.ok, ch.message) for ch in node_checks(c, Client)}
    assert got["node gpu-a"][0] is True and got["node gpu-c"] == (
        False, "http://gpu-c:11434: cannot connect: Connection refused")
    assert got["model llama3:latest"] == (True, "on gpu-a, gpu-b")
    assert got["model qwen2.5:7b"] == (None, "only on gpu-a: no failover for it")
    assert got["model nomic-embed-text:latest"] == (None, "only on gpu-a: no failover for it")
    assert got["model mistral:latest"][0] is False and "on no node" in got["model mistral:latest"][1]
