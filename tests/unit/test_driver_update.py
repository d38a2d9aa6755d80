"""A driver update installed under the running kernel module (unattended-upgrades, apt upgrade):
NVML's "Driver/library version mismatch" (code 18), or a library on disk of another release than
the module while this process still holds the old one. Real nvidia-ml-py against the fake
libnvidia-ml.so.1 (its init_error), a fake /proc/driver/nvidia/version and library directory."""

from __future__ import annotations

import os

import pytest

from localaid import procfs
from localaid.provision.devices import reboot
from localaid.records import GpuObs
from test_gpu_adapter import gpu, nvml, state  # noqa: F401  (fixtures)

VERSION_FILE = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Wed Oct 30 00:00:00 UTC 2024\n"
                "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A /proc with the running module's version, and a library directory as a package leaves it."""
    proc, lib = tmp_path / "proc", tmp_path / "lib"
    (proc / "driver/nvidia").mkdir(parents=True)
    lib.mkdir()
    monkeypatch.setattr(procfs, "PROC", str(proc))
    monkeypatch.setattr(procfs, "NVML_LIB_DIRS", (str(tmp_path / "absent"), str(lib)))

    def set_versions(running: str | None, installed: str | None):
        vf = proc / "driver/nvidia/version"
        vf.unlink(missing_ok=True)
        if running:
            vf.write_text(VERSION_FILE.format(v=running))
        for f in lib.iterdir():
            f.unlink()
        if installed:
            (lib / f"libnvidia-ml.so.{installed}").write_bytes(b"\x7fELF")
            os.symlink(f"libnvidia-ml.so.{installed}", lib / "libnvidia-ml.so.1")
    return set_versions


def test_versions_are_read_from_the_module_and_the_library_file(host):
    host("535.216.01", "550.127.05")
    assert procfs.running_driver_version() == "535.216.01"
    assert procfs.installed_library_version() == "550.127.05"
    assert procfs.driver_versions_differ("535.216.01", "550.127.05")
    assert not procfs.driver_versions_differ("550.127", "550.127.05")  # the same release, shorter
    assert not procfs.driver_versions_differ(None, "550.127.05")  # unknown: never a mismatch
    host(None, None)
    assert procfs.running_driver_version() is None and procfs.installed_library_version() is None


def test_nvml_code_18_is_a_mismatch_with_both_versions(nvml, gpu, host):  # noqa: F811
    host("535.216.01", "550.127.05")
    state(nvml, init_error=18)
    o = gpu.observe()
    assert o.state == "mismatch" and (o.driver, o.driver_installed) == ("535.216.01", "550.127.05")
    assert o.error == "NVIDIA driver updated (550.127.05 installed, 535.216.01 running): reboot to use the GPU"


def test_a_library_updated_on_disk_is_a_mismatch_although_nvml_answers(nvml, gpu, host):  # noqa: F811
    host("550.54.14", "550.54.14")
    state(nvml)
    assert gpu.observe().state == "ok"
    host("550.54.14", "560.35.03")  # apt upgrade: this process keeps the library it loaded
    gpu._versions = None  # (read again every VERSION_RECHECK s)
    o = gpu.observe()
    assert o.state == "mismatch" and o.devices and o.driver_installed == "560.35.03"


def test_the_policy_announces_the_reboot_once_and_restarts_nothing():
    from test_policy_gpu import ON_CPU, RTX, decide, kinds, obs
    g = GpuObs(state="mismatch", devices=(RTX,), driver="535.216.01", driver_installed="550.127.05",
               error="NVIDIA driver updated (550.127.05 installed, 535.216.01 running): reboot to use the GPU")
    h, seen = {}, []
    for t in range(1000, 1400, 20):  # Ollama up for minutes with its model on the CPU
        actions, h, fragment, _notes = decide(obs(t, g, [ON_CPU], enter=900.0), h)
        seen += kinds(actions)
    assert seen == [("start-job", "devices", "driver-mismatch")]  # no CPU-fallback restart, ever
    assert fragment == g.error
    # the same Ollama with a working GPU would have been restarted (the test is not vacuous)
    from test_policy_gpu import OK
    assert ("restart", "ollama.service", "cpu-fallback") in kinds(decide(obs(1400, OK, [ON_CPU], enter=900.0))[0])


def test_the_device_job_writes_reboot_required_once_keeping_other_packages(host, tmp_path, monkeypatch):
    target = tmp_path / "run/reboot-required"
    target.parent.mkdir()
    monkeypatch.setattr(reboot, "REBOOT_REQUIRED", str(target))
    monkeypatch.setattr(reboot, "owning_package", lambda path: "libnvidia-ml1")
    said = []
    rep = type("Rep", (), {"say": lambda self, text, **kw: said.append(text)})()
    host("550.54.14", "550.54.14")
    assert reboot.announce_if_mismatch(rep) is None and not target.exists()
    (tmp_path / "run/reboot-required.pkgs").write_text("linux-image-6.1.0-27-amd64\n")
    host("535.216.01", "550.127.05")
    for _ in range(2):
        assert reboot.announce_if_mismatch(rep).startswith("NVIDIA driver updated")
    assert target.read_text() == "*** System restart required ***\n"
    assert (tmp_path / "run/reboot-required.pkgs").read_text().split() == ["linux-image-6.1.0-27-amd64",
                                                                          "libnvidia-ml1"]
    assert "announced in" in said[0]


def test_the_announcement_is_the_file_debian_and_ubuntu_read():
    """unattended-upgrades (Debian, Ubuntu) and Ubuntu's update-notifier/update-manager read
    /var/run/reboot-required and .pkgs; /var/run is a link to /run on Debian 12, 13 and Ubuntu 24.04
    (base-files), so localaid writes /run/reboot-required itself: no link is followed as root."""
    import importlib
    import os
    env = os.environ.pop("LOCALAID_REBOOT_REQUIRED", None)
    try:
        fresh = importlib.reload(reboot)
        assert fresh.REBOOT_REQUIRED == "/run/reboot-required"
    finally:
        if env is not None:
            os.environ["LOCALAID_REBOOT_REQUIRED"] = env
        importlib.reload(reboot)
    if not os.path.islink("/var/run"):
        pytest.skip("this machine's /var/run is not a link to /run")
    assert os.path.realpath("/var/run/reboot-required") == "/run/reboot-required"
    assert os.path.realpath("/var/run/reboot-required.pkgs") == "/run/reboot-required.pkgs"


# ------------------------------------------------------------------- a driver too old for Ollama
def test_the_table_of_driver_minimums():
    from localaid import driver_support as ds
    assert ds.needed_driver("0.30.11", [(8, 9)]) == 550 and ds.needed_driver("0.40.2", [(6, 1)]) == 570
    assert ds.needed_driver("0.30.10", [(8, 9)]) == 531 and ds.needed_driver("0.0.0", [(8, 9)]) is None
    assert ds.needed_driver(None, [(8, 9)]) is None and ds.needed_driver("0.30.11", [None]) == 550
    assert ds.too_old("0.30.11", "550.54.14", [(8, 9)]) is None
    assert ds.too_old("0.30.11", "535.216.01", [(8, 9)]) == \
        "NVIDIA driver 535.216.01 too old for Ollama 0.30.11 (needs 550 or newer): running on CPU"
    assert ds.too_old("0.30.11", "560.35.03", [(6, 1)]).endswith("(needs 570 or newer): running on CPU")


def test_a_driver_too_old_for_ollama_is_said_and_never_restarted_for():
    from dataclasses import replace as dc_replace
    from test_policy_gpu import OK, ON_CPU, decide, kinds, obs
    old = dc_replace(OK, driver="535.216.01")
    h, seen = {}, []
    for t in range(1000, 1400, 20):
        o = obs(t, old, [ON_CPU], enter=900.0)
        o = dc_replace(o, services={"ollama": dc_replace(o.services["ollama"], version="0.30.11")})
        actions, h, fragment, _ = decide(o, h)
        seen += kinds(actions)
    assert seen == [] and fragment == \
        "NVIDIA driver 535.216.01 too old for Ollama 0.30.11 (needs 550 or newer): running on CPU"
    # an older Ollama, whose build runs on that driver: on the CPU is a fallback to heal
    o = obs(1400, old, [ON_CPU], enter=900.0)
    o = dc_replace(o, services={"ollama": dc_replace(o.services["ollama"], version="0.30.10")})
    assert ("restart", "ollama.service", "cpu-fallback") in kinds(decide(o)[0])
