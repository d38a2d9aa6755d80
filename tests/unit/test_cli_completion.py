"""`localaid completion bash`: the script is made from the command table, is valid bash, and
completes commands, subcommands, options and the values the table marks."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from localaid.cli import main
from localaid.cli.completion import bash_script
from localaid.cli.table import COMMANDS, Command, arg

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "localaid"
    path.write_text(bash_script())
    return path


def complete(script, *words: str, cwd=None) -> list[str]:
    """COMPREPLY after `localaid WORDS...<TAB>`, the last word being the one under the cursor."""
    driver = ('source "$1"; shift; COMP_WORDS=(localaid "$@"); COMP_CWORD=$#; _localaid; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver, "_", str(script), *words],
                       capture_output=True, text=True, check=False, timeout=20, cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [w for w in r.stdout.split("\n") if w]


def test_script_is_valid_bash(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False, timeout=20)
    assert r.returncode == 0, r.stderr


def test_the_command_prints_the_script(capsys):
    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == bash_script()


def test_sourcing_registers_the_function(script):
    r = subprocess.run(["bash", "--norc", "-c", 'source "$1" && complete -p localaid', "_", str(script)],
                       capture_output=True, text=True, check=False, timeout=20)
    assert r.stdout.strip() == "complete -F _localaid localaid"


def test_examples(script):
    assert complete(script, "up") == ["upgrade"]
    assert complete(script, "upgrade", "") == ["ollama", "webui"]
    assert "--version" in complete(script, "upgrade", "webui", "--")
    assert complete(script, "upgrade", "webui", "--version", "") == []  # a version: nothing to offer
    assert complete(script, "") == [c.path[0] for c in COMMANDS if len(c.path) == 1]
    assert complete(script, "--") == ["--help", "--version", "--config", "--conf-d"]
    assert complete(script, "status", "--") == ["--help", "--json"]
    assert complete(script, "config", "check", "--q") == ["--quiet"]
    assert complete(script, "gpu", "resumed", "hy") == ["hybrid-sleep"]
    assert complete(script, "gpu", "resumed", "hibernate", "") == []  # only one KIND
    assert complete(script, "completion", "") == ["bash"]


def test_global_options_and_their_values_are_skipped(script):
    assert complete(script, "--config", "/etc/x.yaml", "--conf-d", "/etc/d", "up") == ["upgrade"]
    assert complete(script, "--config", "=", "/etc/x.yaml", "prov") == ["provision"]  # --config=FILE
    assert complete(script, "--config=/etc/x.yaml", "upgrade", "o") == ["ollama"]
    assert complete(script, "upgrade", "webui", "--version", "0.12.5", "--") == ["--help", "--version"]


def test_file_and_directory_values(script, tmp_path):
    (tmp_path / "localaid.yaml").write_text("")
    (tmp_path / "conf.d").mkdir()
    assert complete(script, "--config", "loc", cwd=tmp_path) == ["localaid.yaml"]
    assert complete(script, "--conf-d", "", cwd=tmp_path) == ["conf.d"]
    assert complete(script, "config", "check", "l", cwd=tmp_path) == ["localaid.yaml"]


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.path], ids=lambda c: c.name)
def test_every_table_entry_completes(script, cmd):
    *parent, name = cmd.path
    assert name in complete(script, *parent, name[:2])
    options = [f for a in cmd.args if not a.positional for f in a.flags if f.startswith("--")]
    assert complete(script, *cmd.path, "--") == ["--help"] + options


def test_words_that_would_need_quoting_are_refused():
    table = (Command((), ""), Command(("x",), "x", args=(arg("k", complete=("a;b",)),), handler=".x:y"))
    with pytest.raises(ValueError, match="cannot complete"):
        bash_script(table)
