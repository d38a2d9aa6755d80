"""The distribution from os-release (Ubuntu 24.04, Debian 12 and 13 as they ship it), and the
driver advice that fits it: STATUS for a card without its driver, `localaid doctor`'s steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from localaid import distro, procfs
from localaid.config import Config
from localaid.procfs import Driver
from localaid.provision.devices import doctor
from localaid.records import NO_DRIVER, GpuObs

PLATFORMS = Path(__file__).resolve().parent / "platforms"
TEXTS = {name: (PLATFORMS / f"os-release-{name}").read_text() for name in ("ubuntu-24.04", "debian-12", "debian-13")}


@pytest.fixture
def on(monkeypatch):
    """on("ubuntu-24.04"): procfs reads that os-release (the LOCALAID_OS_RELEASE seam)."""
    def switch(name: str) -> None:
        monkeypatch.setattr(procfs, "OS_RELEASE", str(PLATFORMS / f"os-release-{name}"))
    return switch


@pytest.mark.parametrize("name, family, version, codename", [
    ("ubuntu-24.04", "ubuntu", "24.04", "noble"), ("debian-12", "debian", "12", "bookworm"),
    ("debian-13", "debian", "13", "trixie")])
def test_os_release_is_read_as_the_distributions_write_it(name, family, version, codename):
    d = distro.parse(TEXTS[name])
    assert (d.family, d.version_id, d.codename) == (family, version, codename)


def test_derivatives_quoting_and_nonsense():
    assert distro.parse('ID=linuxmint\nID_LIKE="ubuntu debian"\n').family == "ubuntu"
    assert distro.parse("ID=raspbian\nID_LIKE=debian\n").family == "debian"
    assert distro.parse("ID=fedora\n").family == "other"
    assert distro.parse("").family == "other" and distro.parse('ID="unterminated\n\x00\n').family == "other"
    assert distro.parse("VERSION_ID='24.04'\nID=\"ubuntu\"\n") == distro.Distro("ubuntu", "ubuntu", "24.04")


def test_the_seam_reads_the_file_it_names(on, tmp_path, monkeypatch):
    on("ubuntu-24.04")
    assert procfs.distro().family == "ubuntu"
    monkeypatch.setattr(procfs, "OS_RELEASE", str(tmp_path / "missing"))
    assert procfs.distro() == distro.Distro()  # unreadable: "other", both families' advice


def test_no_driver_status_names_ubuntus_way_and_keeps_debians():
    ubuntu, debian12, other = (distro.parse(TEXTS["ubuntu-24.04"]), distro.parse(TEXTS["debian-12"]),
                               distro.Distro())
    assert distro.no_driver_status(ubuntu) == "NVIDIA GPU without driver: sudo ubuntu-drivers install and reboot"
    assert distro.no_driver_status(debian12) == distro.no_driver_status(other) == NO_DRIVER
    for d in (ubuntu, debian12, other):
        assert distro.no_driver_status(d).startswith(distro.NO_DRIVER_HEAD)


def test_install_and_upgrade_advice_per_family():
    ubuntu, d12, d13 = (distro.parse(TEXTS[n]) for n in ("ubuntu-24.04", "debian-12", "debian-13"))
    assert "ubuntu-drivers install" in distro.install_advice(ubuntu) and "non-free" not in distro.install_advice(ubuntu)
    assert "apt install nvidia-driver," in distro.install_advice(d12) and "ubuntu-drivers" not in distro.install_advice(d12)
    assert "ubuntu-drivers" in distro.install_advice(distro.Distro()) and "non-free" in distro.install_advice(distro.Distro())
    assert "nvidia-driver-<branch> with a branch of 570 or newer" in distro.upgrade_advice(ubuntu, 570)
    assert "bookworm-backports" in distro.upgrade_advice(d12, 550) and "ubuntu" not in distro.upgrade_advice(d12, 550)
    assert "from trixie" in distro.upgrade_advice(d13, 550) and "bookworm" not in distro.upgrade_advice(d13, 550)
    assert "ubuntu-drivers install" in distro.gpu_speed_advice(ubuntu)
    assert "non-free" in distro.gpu_speed_advice(d13)


def test_a_card_without_driver_on_ubuntu_is_told_ubuntus_way(on, tmp_path, monkeypatch):
    """module_trouble (STATUS and doctor's message) and doctor's advice, end to end on Ubuntu."""
    monkeypatch.setattr(procfs, "MODULES", str(tmp_path / "lib-modules"))
    monkeypatch.setattr(procfs, "DKMS", str(tmp_path / "dkms"))
    on("ubuntu-24.04")
    headline, detail = procfs.module_trouble(("0000:01:00.0",))
    assert headline == "NVIDIA GPU without driver: sudo ubuntu-drivers install and reboot"
    card = f"{headline} (PCI 0000:01:00.0: {detail})"
    monkeypatch.setattr(doctor.GpuHost, "gpu", lambda self, config: GpuObs(state="no-driver", error=card))
    checks = doctor.checks(Config(), Driver(False, frozenset(), {}, (), {}), [], True, lambda c, n: {})
    assert checks[0].ok is False and checks[0].message.startswith(card)
    assert checks[0].advice.startswith("sudo ubuntu-drivers install") and "non-free" not in checks[0].advice
    on("debian-13")
    assert procfs.module_trouble(("0000:01:00.0",))[0] == NO_DRIVER


def test_status_shows_ubuntus_headline_without_the_pci_detail():
    from localaid.policy_gpu import _fragment
    head = distro.no_driver_status(distro.parse(TEXTS["ubuntu-24.04"]))
    assert _fragment(GpuObs(state="no-driver", error=f"{head} (PCI 0000:01:00.0: no nvidia kernel module loaded)")) \
        == head
