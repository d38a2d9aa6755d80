"""bench/bad_inputs.py, groups 1-3 (configuration files, `upgrade --version` values, hostile text
in the journal and STATUS=) run in-process: nothing crashes, changes anything or forges a field,
and every input gets an answer. (Group 4, the install script's downloads, runs a local HTTPS site
and is left to the bench itself.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bad_inputs.py"

# Found by this bench and fixed: a lone surrogate (a JSON "\ud800" escape in an error from
# Ollama's pull stream) crashed log.emit and Notifier.send; "HTTP://" passed the configuration's
# allow_http check (case-sensitive).
SURROGATE = "registry error \ud800 (lone surrogate)"
UPPER_HTTP = "install_script: HTTP:// (no allow_http)"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bad_inputs", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows():
    return _load_bench().run(("config", "cli", "hostile"))


def test_enough_inputs_in_each_group(rows):
    assert len(rows) >= 50
    count = {g: sum(r.group == g for r in rows) for g in ("config", "cli", "hostile")}
    assert count["config"] >= 30 and count["cli"] >= 12 and count["hostile"] >= 8, count


def test_every_row_has_a_message(rows):
    assert [r for r in rows if not r.said.strip() or not r.status.strip() or not r.unchanged.strip()] == []


def test_no_crash_and_nothing_changed_or_forged(rows):
    bad = [(r.group, r.input, r.verdict, r.said) for r in rows
           if r.verdict in ("CRASH", "CHANGED", "FORGED")]
    assert bad == []


def test_every_bad_configuration_is_refused_with_exit_78(rows):
    config = [r for r in rows if r.group == "config" and r.verdict != "skipped"]
    assert [(r.input, r.status) for r in config
            if r.status != "ConfigError; exit 78"] == []


def test_bad_versions_are_usage_errors(rows):
    assert all(r.status == "exit 2 / exit 2" for r in rows if r.group == "cli")


def test_hostile_text_never_adds_a_journal_line_or_notify_field(rows):
    ok = [r for r in rows if r.group == "hostile"]
    assert ok and all(r.verdict == "ok" and r.unchanged.startswith("yes") for r in ok)


def test_lone_surrogate_does_not_crash(rows):
    assert [r.verdict for r in rows if r.input == SURROGATE] == ["ok"]


def test_upper_case_http_is_refused_by_the_configuration(rows):
    assert [r.verdict for r in rows if r.input == UPPER_HTTP] == ["ok"]
