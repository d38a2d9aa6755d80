"""`localaid upgrade ollama|webui --version V` accepts only a plain version: anything else is a
usage error (exit status 2) before any provisioning module is imported, let alone run.
(`--version ..` once removed /var/lib/localaid/webui.)"""

from __future__ import annotations

import sys

import pytest

from localaid.cli import build_parser, main
from localaid.cli.validate import MAX_VERSION, version

BAD = [
    "..", ".", "/", "../x", "0.12.4/../..", "/etc/passwd", "0.12.4/..",
    "", " ", "0.12.4 ", " 0.12.4", "0.12 .4", "0.12\t4", "0.12.4\n", "\n",
    "1.0\x00", "\x1b[31m1.0", "1.0\x7f",
    "1" * (MAX_VERSION + 1), "0." + "1" * MAX_VERSION,
    "0.12.4;rm -rf /", "$(id)", "`id`", "0.12.4|cat", "0.12.4&", "1.0>x", "1.0<x", "'1.0'", '"1.0"',
    "1.0*", "1.0?", "~1.0", "1.0\\", "1.0,2", "1.0%2f..", "{1,2}", "1.0!", "1!2.0", "1.0#x",
    "1..2", "1.0.", ".1.0", "1.0-", "1.0--rc", "-1.0", "+1.0",
    "v", "vv1.0", "latest", "x1.0", "１.0", "1.0é",
]
GOOD = {
    "0.12.4": "0.12.4", "0.9.1": "0.9.1", "1.0.0rc1": "1.0.0rc1", "0.6.16-rc0": "0.6.16-rc0",
    "v0.12.4": "0.12.4", "V1.2.3": "1.2.3", "1.2.post1": "1.2.post1", "0.6.5.dev3": "0.6.5.dev3",
    "2.0.0+cpu": "2.0.0+cpu", "1.0.0-beta.1": "1.0.0-beta.1", "1.0_1": "1.0_1", "7": "7",
    "1" * MAX_VERSION: "1" * MAX_VERSION,
}
COMPONENTS = ("ollama", "webui")


def parse(component, value):
    return build_parser().parse_args(["upgrade", component, f"--version={value}"])


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("value", BAD, ids=ascii)
def test_bad_versions_are_usage_errors(component, value, capsys):
    with pytest.raises(SystemExit) as e:
        parse(component, value)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"localaid upgrade {component}: error: argument --version: invalid version" in err
    assert "\x1b" not in err and "\x00" not in err  # what was typed is shown escaped


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("value", GOOD, ids=ascii)
def test_good_versions(component, value):
    assert parse(component, value).target_version == GOOD[value]
    assert build_parser().parse_args(["upgrade", component, "--version", value]).target_version == GOOD[value]


def test_version_type_directly():
    assert version("v0.12.4") == "0.12.4"
    for value in ("..", "0.12.4/../..", ""):
        with pytest.raises(Exception, match="invalid version"):
            version(value)


@pytest.mark.parametrize("component", COMPONENTS)
def test_nothing_is_touched_on_a_bad_version(component, monkeypatch, capsys):
    module = f"localaid.provision.{component}"
    monkeypatch.delitem(sys.modules, module, raising=False)
    from localaid.cli import common
    monkeypatch.setattr(common, "load_config", lambda args: pytest.fail("configuration loaded"))
    with pytest.raises(SystemExit) as e:
        main(["upgrade", component, "--version", ".."])
    assert e.value.code == 2 and module not in sys.modules
    assert "invalid version '..'" in capsys.readouterr().err
