"""Every unit option localaid ships or writes is one the oldest supported systemd documents.

The supported systems run systemd 252 (Debian 12), 255 (Ubuntu 24.04) and 257 (Debian 13). The
lists in tests/unit/platforms/systemd-NNN.options were read by tools/systemd-options from each
release's man pages: 252's and 257's as Debian 12's and 13's systemd packages install them, 255's
from the DocBook sources of systemd's v255.4 tag (Ubuntu 24.04's 255.4; the same reader gives
exactly the roff list at v252.31). An option newer than 252 fails here unless the code writes it
only where systemd is newer (none does today).

What is checked: units/*.service and *.timer as shipped, and everything localaid writes at run
time: the drop-ins of ollama.service, open-webui.service, localaid-webui-setup.service and the
backup timer and service, with every optional line switched on, and the properties of the
transient units it starts with systemd-run (the installers' sandbox, the firewall probe).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from localaid.config import Config, OllamaConfig, WebUIConfig
from localaid.provision import ollama as ollama_prov
from localaid.provision import webui
from localaid.provision.host import Result
from localaid.provision.ollama import firewall
from localaid.provision.webui import sandbox, schedule

ROOT = Path(__file__).resolve().parents[2]
TABLES = Path(__file__).resolve().parent / "platforms"
OLDEST, UBUNTU, NEWEST = 252, 255, 257


def documented(version: int) -> set[tuple[str, str]]:
    lines = (TABLES / f"systemd-{version}.options").read_text().splitlines()
    return {tuple(line.split()) for line in lines if line and not line.startswith("#")}


def options_in(text: str, default_section: str | None = None) -> set[tuple[str, str]]:
    """(section, "Key=") of every setting in a unit file's text (continuation lines joined)."""
    out, section = set(), default_section
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, eq, _ = line.partition("=")
        assert eq and section, f"not a setting: {line!r}"
        out.add((section, key.strip() + "="))
    return out


def shipped() -> dict[str, set[tuple[str, str]]]:
    files = sorted(ROOT.glob("units/*.service")) + sorted(ROOT.glob("units/*.timer"))
    assert len(files) >= 8, files
    return {f"units/{f.name}": options_in(f.read_text()) for f in files}


def _full_config() -> Config:
    """Every optional line of every drop-in on: another data dir, the GPU for Open WebUI, a
    firewall for Ollama, a backup dir of its own."""
    base = Config()
    return dataclasses.replace(
        base, webui=dataclasses.replace(WebUIConfig(), data_dir="/srv/open webui", gpu=True),
        ollama=dataclasses.replace(OllamaConfig(), host="0.0.0.0", allow_from=("10.0.0.0/24",),
                                   models_dir="/home/ai/models"),
        backup=dataclasses.replace(base.backup, dir="/mnt/backups"))


def _probe_properties() -> list[str]:
    class Host:
        argv: list[str] = []

        def run(self, argv, timeout):
            Host.argv = argv
            return Result(0, ("EPERM",))
    firewall.probe(Host())
    return [a.removeprefix("--property=") for a in Host.argv if a.startswith("--property=")]


def written() -> dict[str, set[tuple[str, str]]]:
    c = _full_config()
    jail = sandbox.Jail(sandbox.unit_name("venv-1"), "open-webui", "/run/x.env", ("/var/lib/localaid/webui",),
                        ("/var/lib/localaid/webui/old",), ("/var/lib/open-webui",))
    out = {
        "ollama.service.d/50-localaid.conf": options_in(ollama_prov.render_dropin(c.ollama, ("/dev/nvidia0",))),
        "open-webui.service.d": options_in(webui.render_dropin(c, ["video", "render"])),
        "localaid-webui-setup.service.d": options_in(webui.render_setup_dropin(c, "/srv")),
        "localaid-backup.timer.d": options_in(schedule.render_timer_dropin(c)),
        "localaid-backup.service.d": options_in(schedule.render_service_dropin(c)),
        "systemd-run: installers' sandbox": options_in("\n".join(sandbox.properties(jail, 60)), "Service"),
        "systemd-run: firewall probe": options_in("\n".join(_probe_properties()), "Service"),
    }
    for name, found in out.items():
        assert found, f"{name}: nothing rendered"
    return out


def everything() -> dict[str, set[tuple[str, str]]]:
    return {**shipped(), **written()}


def test_the_tables_are_real_man_page_reads():
    """Spot checks that the lists hold what those releases' man pages say, and their difference."""
    old, new = documented(OLDEST), documented(NEWEST)
    assert len(old) > 500 and len(new) > len(old)
    for option in [("Service", "ProtectProc="), ("Service", "DeviceAllow="), ("Service", "IPAddressDeny="),
                   ("Unit", "ConditionPathExists="), ("Install", "WantedBy="), ("Timer", "RandomizedDelaySec=")]:
        assert option in old and option in new
    # added after 252 (systemd's NEWS: 253 OpenFile=, 254 RestartMode=, 256 WantsMountsFor=, 257 PrivatePIDs=)
    for option in [("Service", "OpenFile="), ("Service", "RestartMode="), ("Unit", "WantsMountsFor="),
                   ("Service", "PrivatePIDs=")]:
        assert option in new and option not in old
    assert old <= new, sorted(old - new)  # nothing documented in 252 was dropped by 257
    noble = documented(UBUNTU)
    assert old <= noble <= new, (sorted(old - noble), sorted(noble - new))
    # 255's own additions are there (NEWS: 254 RestartMode=, 255 SurviveFinalKillSignal=), 256's are not
    assert {("Service", "RestartMode="), ("Unit", "SurviveFinalKillSignal=")} <= noble - old
    assert ("Unit", "WantsMountsFor=") not in noble and ("Service", "PrivatePIDs=") not in noble


def test_the_collector_sees_every_section_and_key():
    found = options_in("[Unit]\nAfter=a\n# x=y\n\n[Service]\nExecStart=/bin/a \\\n  --b=c\nUser=x\n")
    assert found == {("Unit", "After="), ("Service", "ExecStart="), ("Service", "User=")}
    with pytest.raises(AssertionError):
        options_in("[Service]\nnot a setting\n")


@pytest.mark.parametrize("version", [OLDEST, UBUNTU, NEWEST])
def test_every_option_is_documented_by_the_supported_systemd(version):
    known = documented(version)
    unknown = {f"{where}: [{s}] {k}" for where, found in everything().items() for s, k in found
               if (s, k) not in known}
    assert not unknown, f"not in systemd {version}'s man pages: {sorted(unknown)}"


def test_no_option_in_use_is_newer_than_ubuntus_255():
    """Those only Debian 13's 257 documents, of what localaid writes: none."""
    only_257 = documented(NEWEST) - documented(UBUNTU)
    assert set().union(*everything().values()) & only_257 == set()


def test_a_newer_option_would_be_caught():
    """The check is not vacuous: an option of 253+ in a drop-in fails it."""
    known = documented(OLDEST)
    newer = options_in("[Service]\nRestartMode=direct\nProtectSystem=strict\n")
    assert newer - known == {("Service", "RestartMode=")}


def test_what_is_checked_covers_the_hardening_and_the_drop_ins():
    found = set().union(*everything().values())
    for option in [("Service", "DeviceAllow="), ("Service", "IPAddressAllow="), ("Service", "SupplementaryGroups="),
                   ("Service", "RuntimeMaxSec="), ("Service", "DynamicUser="), ("Timer", "OnCalendar="),
                   ("Service", "WatchdogSec="), ("Install", "WantedBy=")]:
        assert option in found, option
