"""The .deb installs on Debian 12, Debian 13 and Ubuntu 24.04 from their own archives.

debian/control's Depends/Recommends/Suggests (with ${python3:Depends} as dh_python3 fills it in
from pyproject.toml, and ${misc:Depends} empty for this package) are checked against the
checked-in tables in tests/unit/platforms/packages-<codename>.txt: every package must be in the
release (Debian: main; Ubuntu: main or universe, so no restricted or multiverse), and every
version constraint must hold for the release's own version (the lowest the table lists, i.e. a
machine installed from the release media and never updated), compared by `dpkg --compare-versions`.
The Debian tables come from apt's lists (tools/apt-table); noble's was read from Ubuntu's package
pages, which no test here can reach: the table says what could not be read.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLES = Path(__file__).resolve().parent / "platforms"
# dh_python3's names for the project's Python requirements (its own mapping, as the built .deb
# shows: Depends: python3-httpx, python3-pydbus, python3-yaml, python3:any (>= 3.11~), ...)
PYTHON3_DEBIAN_NAMES = {"pydbus": "python3-pydbus", "httpx": "python3-httpx", "PyYAML": "python3-yaml"}
RELEASES = {"bookworm": ("main",), "trixie": ("main",), "noble": ("main", "universe")}
# what the noble table could not verify (its comment says why); any other "?" fails
UNREAD_ON_NOBLE = {"python3-pip", "python3-cryptography", "nginx"}
FIELDS = ("Depends", "Recommends", "Suggests")


def control_fields() -> dict[str, str]:
    """The binary package's relationship fields from debian/control, continuation lines joined."""
    text = (ROOT / "debian/control").read_text()
    binary = text[text.index("\nPackage: localaid"):]
    out = {}
    for m in re.finditer(r"^(\S+):(.*(?:\n[ \t].*)*)", binary, re.M):
        if m.group(1) in FIELDS:
            out[m.group(1)] = " ".join(m.group(2).split())
    return out


def python3_depends() -> list[str]:
    """${python3:Depends}: python3:any with X-Python3-Version, and the requirements that
    debian/py3dist-overrides does not map away."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    skipped = {line.strip() for line in (ROOT / "debian/py3dist-overrides").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    wanted = [re.split(r"[<>=!~ \[;]", d)[0] for d in project["dependencies"]]
    unmapped = [d for d in wanted if d not in skipped and d not in PYTHON3_DEBIAN_NAMES]
    assert not unmapped, f"add the Debian package name of {unmapped} to PYTHON3_DEBIAN_NAMES"
    minimum = re.search(r"X-Python3-Version:\s*>=\s*(\S+)", (ROOT / "debian/control").read_text()).group(1)
    return [f"python3:any (>= {minimum}~)"] + [PYTHON3_DEBIAN_NAMES[d] for d in wanted if d not in skipped]


def relations() -> list[tuple[str, list[tuple[str, str | None, str | None]]]]:
    """(field, alternatives) for every relation; an alternative is (package, op, version)."""
    out = []
    for field, value in control_fields().items():
        value = value.replace("${misc:Depends}", "").replace("${python3:Depends}", ", ".join(python3_depends()))
        for relation in filter(None, (r.strip() for r in value.split(","))):
            alts = []
            for alt in relation.split("|"):
                m = re.fullmatch(r"\s*([a-z0-9.+-]+)(?::any)?\s*(?:\((<<|<=|=|>=|>>)\s*([^)\s]+)\))?\s*", alt)
                assert m, f"cannot read {alt!r} in {field}"
                alts.append(m.groups())
            out.append((field, alts))
    return out


def table(codename: str) -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {}
    for line in (TABLES / f"packages-{codename}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            package, version, component, pocket = line.split()
            out.setdefault(package, []).append((version, component, pocket))
    return out


def version_ok(have: str, op: str, want: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", have, {"<<": "lt", "<=": "le", "=": "eq", ">=": "ge",
                                                                 ">>": "gt"}[op], want]).returncode == 0


def release_version(rows) -> str:
    """The lowest version the table lists: what the release itself shipped."""
    known = [v for v, _, _ in rows if v != "?"]
    return min(known, key=lambda v: sum(not version_ok(v, "<=", other) for other in known)) if known else "?"


def problems(codename: str) -> list[str]:
    rows, components = table(codename), RELEASES[codename]
    out = []
    for field, alts in relations():
        why = []
        for package, op, want in alts:
            if package not in rows:
                why.append(f"{package} is not in {codename}")
                continue
            have = release_version(rows[package])
            comps = {c for _, c, _ in rows[package]}
            if "?" in comps or have == "?":
                if not (codename == "noble" and package in UNREAD_ON_NOBLE and op is None):
                    why.append(f"{package}: {codename}'s entry could not be read")
                    continue
            elif not comps & set(components):
                why.append(f"{package} is in {'/'.join(sorted(comps))} on {codename}, not {'/'.join(components)}")
                continue
            if op and not version_ok(have, op, want):
                why.append(f"{package} ({op} {want}): {codename} ships {have}")
                continue
            why = []
            break
        if why:
            out.append(f"{field}: " + "; ".join(why))
    return out


def test_the_packages_relations_as_dh_python3_fills_them_in():
    names = {alts[0][0]: alts[0] for _, alts in relations()}
    assert names["python3"] == ("python3", ">=", "3.11~")
    for package in ("python3-httpx", "python3-pydbus", "python3-yaml", "python3-venv", "python3-pip",
                    "python3-gi", "curl", "kmod", "zstd", "ca-certificates"):
        assert package in names
    assert "nvidia-ml-py" not in " ".join(names)  # bundled: Debian and Ubuntu do not package it


@pytest.mark.parametrize("codename", sorted(RELEASES))
def test_every_relation_is_met_by_the_release_itself(codename):
    assert problems(codename) == []


def test_noble_ships_python_3_12_and_the_libraries_in_universe():
    rows = table("noble")
    assert release_version(rows["python3"]) == "3.12.3-0ubuntu1"
    assert {c for _, c, _ in rows["python3-pydbus"]} == {"universe"}
    assert {c for _, c, _ in rows["python3-httpx"]} == {"universe"}
    assert {c for _, c, _ in rows["python3-venv"]} == {"universe"}
    assert UNREAD_ON_NOBLE == {p for p, r in rows.items() if any("?" in row for row in r)}


def test_the_check_fails_where_it_should(monkeypatch):
    """Not vacuous: a package missing, a constraint too high, restricted instead of universe."""
    rows = table("noble")
    assert release_version([("1.0-1", "main", "x"), ("1.0-1ubuntu0.2", "main", "x-updates")]) == "1.0-1"
    assert version_ok("3.12.3-0ubuntu1", ">=", "3.11~") and not version_ok("3.12.3-0ubuntu1", ">=", "3.13~")
    monkeypatch.setattr(sys.modules[__name__], "table", lambda c: {
        **{k: v for k, v in rows.items() if k != "kmod"},
        "python3-httpx": [("0.26.0-2", "restricted", "noble")]})
    found = problems("noble")
    assert any("kmod is not in noble" in p for p in found), found
    assert any("python3-httpx is in restricted" in p for p in found), found
    monkeypatch.setattr(sys.modules[__name__], "relations", lambda: [("Depends", [("python3", ">=", "3.13~")])])
    assert problems("noble") == ["Depends: python3 (>= 3.13~): noble ships 3.12.3-0ubuntu1"]
