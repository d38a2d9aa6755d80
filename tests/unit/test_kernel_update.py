"""A kernel update DKMS did not follow, said before the reboot: doctor names the installed kernel
that has no nvidia module while the running one has, and how to build it."""

from __future__ import annotations

from localaid import procfs
from localaid.config import Config
from localaid.procfs import Driver
from localaid.provision.devices import doctor
from localaid.records import GpuObs


def tree(root, kernel, module=True, dep=True):
    d = root / kernel
    (d / "kernel").mkdir(parents=True)
    if dep:
        (d / "modules.dep").write_text("")
    if module:
        (d / "updates" / "dkms").mkdir(parents=True)
        (d / "updates" / "dkms" / "nvidia-current.ko.xz").write_bytes(b"\0")


def test_an_installed_kernel_without_the_module_is_named_newest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "MODULES", str(tmp_path))
    monkeypatch.setattr(procfs, "KERNEL", "6.1.0-9-amd64")
    tree(tmp_path, "6.1.0-9-amd64")
    assert procfs.kernels_without_module() == []
    tree(tmp_path, "6.1.0-31-amd64", module=False)
    tree(tmp_path, "6.1.0-10-amd64", module=False)
    tree(tmp_path, "6.1.0-8-amd64", module=False, dep=False)  # a leftover directory, not a kernel
    assert procfs.kernels_without_module() == ["6.1.0-31-amd64", "6.1.0-10-amd64"]
    monkeypatch.setattr(doctor.GpuHost, "gpu", lambda self, config: GpuObs(state="none"))
    [check] = [c for c in doctor.checks(Config(), Driver(False, frozenset(), {}, (), {}), [], True, lambda c, n: {})
               if c.name == "next kernel"]
    assert check.ok is False
    assert check.message == ("kernel 6.1.0-31-amd64 is installed without the nvidia module (DKMS did not build it): "
                             "booting it leaves the GPU without its driver (also 6.1.0-10-amd64)")
    assert check.advice.startswith("sudo apt install linux-headers-6.1.0-31-amd64 && sudo dkms autoinstall -k "
                                   "6.1.0-31-amd64")


def test_no_module_now_means_nothing_to_lose(tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "MODULES", str(tmp_path))
    monkeypatch.setattr(procfs, "KERNEL", "6.1.0-9-amd64")
    tree(tmp_path, "6.1.0-9-amd64", module=False)
    tree(tmp_path, "6.1.0-31-amd64")
    assert procfs.kernels_without_module() == []
