"""The command table (localaid/cli/table.py) → argparse: every entry reachable with its handler,
every `--help` exits 0, the options and exit statuses the man page and README describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from localaid import __version__, paths
from localaid.cli import build_parser, check_table, main, resolve
from localaid.cli import doctor as doctor_cli
from localaid.cli import status as status_cli
from localaid.cli.table import COMMANDS, Command, arg
from localaid.records import Check

ROOT = Path(__file__).resolve().parents[2]
LEAVES = [c for c in COMMANDS if c.handler]


def argv_for(cmd: Command) -> list[str]:
    """The command's path plus a value for each required positional."""
    argv = list(cmd.path)
    for a in cmd.args:
        if a.positional and a.options.get("nargs") not in ("?", "*"):
            argv.append(a.options["choices"][0] if "choices" in a.options else "x")
    return argv


@pytest.mark.parametrize("cmd", LEAVES, ids=lambda c: c.name)
def test_every_leaf_reaches_its_handler(cmd):
    args = build_parser().parse_args(argv_for(cmd))
    assert args.handler == cmd.handler
    assert callable(resolve(cmd.handler))


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_every_help_exits_0(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(list(cmd.path) + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {cmd.name} ")
    assert (cmd.description or cmd.help).splitlines()[0] in out
    for a in cmd.args:
        assert (a.options.get("metavar") or a.flags[-1]) in out


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.path and not c.handler], ids=lambda c: c.name)
def test_a_group_without_its_subcommand_is_a_usage_error(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(list(cmd.path))
    assert e.value.code == 2
    assert "required" in capsys.readouterr().err


def test_every_group_lists_its_subcommands(capsys):
    for group in (c for c in COMMANDS if not c.handler):
        with pytest.raises(SystemExit):
            build_parser().parse_args(list(group.path) + ["--help"])
        out = capsys.readouterr().out
        for child in (c for c in COMMANDS if c.path[:-1] == group.path and c.path):
            assert f"    {child.path[-1]}" in out and child.help in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: localaid ")


def test_program_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"localaid {__version__}"


@pytest.mark.parametrize("argv, expected", [
    (["status"], {"json": False, "config": paths.CONFIG_FILE, "conf_d": paths.CONFIG_DIR}),
    (["--config", "/x.yaml", "--conf-d", "/d", "status", "--json"], {"json": True, "config": "/x.yaml", "conf_d": "/d"}),
    (["config", "check"], {"file": None, "quiet": False}),
    (["config", "check", "f.yaml", "-q"], {"file": "f.yaml", "quiet": True}),
    (["config", "check", "--quiet"], {"quiet": True}),
    (["pull", "deepseek-r1:8b"], {"model": "deepseek-r1:8b"}),
    (["models", "--json"], {"json": True}),
    (["upgrade", "ollama"], {"target_version": None}),
    (["upgrade", "ollama", "--version", "v0.9.1"], {"target_version": "0.9.1"}),
    (["upgrade", "webui", "--version", "0.12.5"], {"target_version": "0.12.5"}),
    (["gpu", "resumed"], {"kind": "suspend"}),
    (["gpu", "resumed", "hibernate"], {"kind": "hibernate"}),
    (["completion", "bash"], {"shell": "bash"}),
])
def test_existing_options(argv, expected):
    args = vars(build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


def test_completion_takes_only_bash(capsys):
    with pytest.raises(SystemExit) as e:
        main(["completion", "zsh"])
    assert e.value.code == 2 and "invalid choice: 'zsh'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- the table
@pytest.mark.parametrize("table, problem", [
    ((Command(("a",), "a", handler=".x:y"),), "starts with the program"),
    ((Command((), ""), Command(("a",), "a", handler=".x:y"), Command(("a",), "a", handler=".x:y")), "twice"),
    ((Command((), ""), Command(("a", "b"), "b", handler=".x:y")), "before its group"),
    ((Command((), ""), Command(("a",), "a")), "no handler"),
    ((Command((), ""), Command(("a",), "a", handler=".x:y"), Command(("a", "b"), "b", handler=".x:y")),
     "a group has no handler"),
])
def test_table_rules(table, problem):
    with pytest.raises(ValueError, match=problem):
        check_table(table)
    check_table(COMMANDS)


def test_parser_from_another_table(capsys):
    table = (Command((), "demo", metavar="COMMAND"), Command(("hello",), "say hello", "Say hello.",
             args=(arg("--loud", action="store_true", help="shout"),), handler=".x:y"))
    args = build_parser(table).parse_args(["hello", "--loud"])
    assert args.handler == ".x:y" and args.loud is True


def test_handlers_are_in_the_cli_package():
    for cmd in LEAVES:
        module = resolve(cmd.handler).__module__
        assert module.startswith("localaid.cli."), cmd.name


def test_no_cli_module_is_over_400_lines():
    for p in (ROOT / "localaid" / "cli").glob("*.py"):
        assert len(p.read_text().splitlines()) <= 400, p.name


def test_man_page_names_every_command():
    man = (ROOT / "debian" / "localaid.1").read_text().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
    for cmd in COMMANDS:
        if len(cmd.path) == 1:
            assert f"localaid {cmd.path[0]}" in man, cmd.name
    assert "/usr/share/bash-completion/completions/localaid" in man


def test_parser_and_completion_import_only_the_standard_library():
    """debian/rules runs `python3 -m localaid completion bash` at build time, where python3-yaml,
    -httpx and -pydbus are not build dependencies."""
    code = ("import sys, runpy\n"
            "for m in ('yaml', 'httpx', 'pydbus', 'gi'): sys.modules[m] = None\n"
            "sys.argv = ['localaid', 'completion', 'bash']\n"
            "runpy.run_module('localaid', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 0, r.stderr
    assert "complete -F _localaid localaid" in r.stdout


# ------------------------------------------------------------------ dispatch and exit statuses
def test_config_check_of_a_file(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("")
    bad.write_text("health:\n  interval: soon\n")
    assert main(["config", "check", str(good)]) == 0
    assert "configuration valid" in capsys.readouterr().out
    assert main(["config", "check", "-q", str(good)]) == 0 and capsys.readouterr().out == ""
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "problem found" in err


def test_invalid_configuration_is_78_for_commands_that_load_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("health:\n  interval: soon\n")
    assert main(["--config", str(bad), "--conf-d", str(tmp_path / "none"), "config", "check"]) == 78
    with pytest.raises(SystemExit) as e:
        main(["--config", str(bad), "--conf-d", str(tmp_path / "none"), "doctor"])
    assert e.value.code == 78 and f"{bad}:2" in capsys.readouterr().err


@pytest.mark.parametrize("argv, module, function", [
    (["upgrade", "ollama", "--version", "0.9.1"], "localaid.provision.ollama", "upgrade_main"),
    (["upgrade", "webui"], "localaid.provision.webui", "upgrade_main"),
    (["provision", "devices"], "localaid.provision.devices", "devices_main"),
    (["provision", "ollama"], "localaid.provision.ollama", "provision_main"),
    (["provision", "webui"], "localaid.provision.webui", "provision_main"),
    (["gpu", "recover"], "localaid.provision.devices", "gpu_recover_main"),
    (["gpu", "resumed", "hibernate"], "localaid.provision.devices", "resumed_main"),
])
def test_area_commands_call_the_area_by_name(argv, module, function, monkeypatch):
    from localaid.cli import common
    calls = []
    monkeypatch.setattr(common, "load_config", lambda args: "CONFIG")
    monkeypatch.setitem(sys.modules, module, SimpleNamespace(
        **{function: lambda args, config: calls.append((module, args, config)) or 7}))
    assert main(argv) == 7
    (name, args, config), = calls
    assert name == module and config == "CONFIG"
    if argv[0] == "upgrade":
        assert args.target_version == (argv[3] if len(argv) > 2 else None)


def write_status(tmp_path, monkeypatch, doc, daemon="active"):
    path = tmp_path / "status.json"
    if doc is not None:
        path.write_text(json.dumps(doc))
    monkeypatch.setattr(paths, "STATUS_FILE", str(path))
    monkeypatch.setattr(status_cli, "daemon_state", lambda: daemon)


@pytest.mark.parametrize("doc, daemon, rc", [
    ({"healthy": True, "status_line": "ok"}, "active", 0),
    ({"healthy": False, "status_line": "ollama down"}, "active", 1),
    ({"healthy": True, "status_line": "ok"}, "inactive", 3),
    ({"healthy": True, "status_line": "ok", "age": 60}, "active", 3),
    (None, "active", 3),
])
def test_status_exit_statuses(doc, daemon, rc, tmp_path, monkeypatch, capsys):
    import time
    if doc is not None:
        doc = dict(doc, written=time.time() - doc.pop("age", 0))
    write_status(tmp_path, monkeypatch, doc, daemon)
    assert main(["status"]) == rc
    out = capsys.readouterr().out
    if doc is None:
        assert "no state yet" in out
    else:
        assert f"● {doc['status_line']}" in out
    if daemon != "active":
        assert "localaid daemon is inactive" in out
    assert main(["status", "--json"]) == rc
    assert json.loads(capsys.readouterr().out)["daemon"] == daemon


def test_doctor_renders_and_exits(monkeypatch, capsys):
    checks = [Check("config", True, "valid"), Check("vram", None, "tight", "use a smaller model"),
              Check("daemon", False, "inactive", "systemctl start localaid")]
    monkeypatch.setattr(doctor_cli, "run", lambda config: checks)
    monkeypatch.setattr(doctor_cli, "load_config", lambda args: None)
    assert main(["doctor"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "[ok  ] config: valid", "[warn] vram: tight", "       → use a smaller model",
        "[FAIL] daemon: inactive", "       → systemctl start localaid"]
    monkeypatch.setattr(doctor_cli, "run", lambda config: checks[:2])
    assert main(["doctor"]) == 0


def test_doctor_runs_each_area_by_name_and_survives_a_broken_one(monkeypatch):
    def crash(config):
        raise RuntimeError("boom")
    monkeypatch.setattr(doctor_cli, "core_checks", lambda config: [Check("config", True, "valid")])
    monkeypatch.setitem(sys.modules, "localaid.provision.devices",
                        SimpleNamespace(doctor_checks=lambda config: [Check("gpu", True, f"seen {config}")]))
    monkeypatch.setitem(sys.modules, "localaid.provision.ollama", SimpleNamespace(doctor_checks=crash))
    monkeypatch.setitem(sys.modules, "localaid.provision.webui", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "localaid.provision.https.doctor", SimpleNamespace())
    checks = doctor_cli.run("CFG")
    assert [(c.name, c.ok, c.message) for c in checks] == [
        ("config", True, "valid"), ("gpu", True, "seen CFG"), ("ollama", False, "check crashed: RuntimeError('boom')")]
    assert doctor_cli.exit_code(checks) == 1
