"""The shipped Prometheus rules (etc/localaid.rules.yml) with the real promtool (Debian's
prometheus package, installed by tools/setup-host): they parse, and they fire on the series
localaid writes (tests/unit/rules/*_test.yml), which report.py must keep producing."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localaid import report
from localaid.config import Config
from localaid.records import BackupObs, Decision, DiskObs, History, NodeObs, Observation, Probe, TlsObs

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "localaid.rules.yml"
TESTS = sorted((ROOT / "tests" / "unit" / "rules").glob("*_test.yml"))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: tools/setup-host installs it (package prometheus)")
    return path


def test_the_rules_parse():
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("case", TESTS, ids=[t.name for t in TESTS])
def test_the_rules_fire_as_their_tests_say(case):
    r = subprocess.run([promtool(), "test", "rules", case.name], cwd=case.parent, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _written() -> dict[str, set[str]]:
    """Each series name report.metrics_text writes, with its label names, for an observation that
    has every optional part (a backup, a UI host's node, a restart)."""
    obs = Observation(now=0, backup=BackupObs(wall=10.0, good_at=5.0, good_size=1, last_at=5.0, since=1.0),
                      nodes=(NodeObs("http://a:11434", Probe(True, 0.01), in_use=True),),
                      disks=(DiskObs("models", "/usr/share/ollama/.ollama/models", 10**9, 10**11, 1),),
                      tls=TlsObs(wall=10.0, not_after=2e9, fingerprint="AB", own=False))
    counts = {("ollama", "kill-restart", "hung"): 1}
    metrics = report.metrics_text(obs, Decision((), History(), "", True), counts, 0.01, Config())
    written: dict[str, set[str]] = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            written.setdefault(name.split()[0], set()).update(re.findall(r'(\w+)="', rest.partition("}")[0]))
    return written


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def test_every_series_the_rules_read_is_one_localaid_writes():
    written = _written()
    read = set(re.findall(r"\blocalaid_[a-z_]+", RULES.read_text()))
    assert read and read <= set(written), read - set(written)


def test_every_label_the_rules_use_is_one_localaid_writes():
    """Selector labels, by/on labels and $labels.X in annotations: those of the series the rule reads."""
    written = _written()
    for rule in _rules():
        expr = rule["expr"]
        names = set(re.findall(r"\blocalaid_[a-z_]+", expr))
        have = set().union(*(written[n] for n in names)) | TARGET_LABELS
        for name, selector in re.findall(r"\b(localaid_[a-z_]+)\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*[=!]", selector))
            assert used <= written[name] | TARGET_LABELS, (rule.get("alert"), name, used - written[name])
        grouped = {x.strip() for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr) for x in group.split(",")}
        templated = set(re.findall(r"\$labels\.(\w+)", " ".join(rule.get("annotations", {}).values())))
        assert grouped - {""} <= have, (rule.get("alert"), grouped - have)
        assert templated <= have, (rule.get("alert"), templated - have)


def test_every_label_value_the_rules_match_is_one_localaid_uses():
    """cause="cpu-fallback", state=~"no-driver|mismatch": each value is a string localaid's code
    writes (a renamed cause or GPU state would leave the alert silent for ever)."""
    source = "\n".join(p.read_text() for p in (ROOT / "localaid").rglob("*.py"))
    for rule in _rules():
        for label, values in re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', rule["expr"]):
            for value in values.split("|"):
                assert f'"{value}"' in source, (rule["alert"], label, value)


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not():
    cases: dict[str, set[bool]] = {}
    for case in TESTS:
        for test in yaml.safe_load(case.read_text())["tests"]:
            for check in test.get("alert_rule_test", ()):
                cases.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for rule in _rules():
        assert cases.get(rule["alert"]) == {True, False}, (rule["alert"], cases.get(rule["alert"]))
