"""The shipped Prometheus rules (etc/localaid.rules.yml) with the real promtool (Debian's
prometheus package, installed by tools/setup-host): they parse, and they fire on the series
localaid writes (tests/unit/rules/*_test.yml), which report.py must keep producing."""

import shutil
import subprocess
from pathlib import Path

import pytest

from localaid import report
from localaid.records import BackupObs, Decision, History, Observation

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


def test_every_series_the_rules_read_is_one_localaid_writes():
    text = RULES.read_text()
    obs = Observation(now=0, backup=BackupObs(wall=10.0, good_at=5.0, good_size=1, last_at=5.0, since=1.0))
    metrics = report.metrics_text(obs, Decision((), History(), "", True), {}, 0.01, 86400)
    written = {line.split("{")[0].split()[0] for line in metrics.splitlines() if line and not line.startswith("#")}
    import re
    read = set(re.findall(r"\blocalaid_[a-z_]+", text))
    assert read and read <= written, read - written
