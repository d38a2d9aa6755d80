"""An NVIDIA card without its driver: found on the PCI bus (procfs, LOCALAID_SYS), said by
`localaid doctor` and by the device job, while Ollama runs on the CPU."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from localaid import log, paths, procfs
from localaid.config import Config
from localaid.procfs import Driver
from localaid.provision import devices
from localaid.provision.devices import doctor
from localaid.records import NO_DRIVER, GpuObs

CARD = f"{NO_DRIVER} (PCI 0000:01:00.0: no nvidia kernel module loaded)"


@pytest.fixture(autouse=True)
def no_nvidia_installed(tmp_path, monkeypatch):
    """This machine's own /lib/modules and DKMS trees stay out of it: nothing of NVIDIA's installed."""
    monkeypatch.setattr(procfs, "MODULES", str(tmp_path / "lib-modules"))
    monkeypatch.setattr(procfs, "DKMS", str(tmp_path / "dkms"))
    monkeypatch.setattr(procfs, "KERNEL", "6.1.0-28-amd64")


def fake_sys(root: Path, devs: dict[str, tuple[str, str]]) -> str:
    for addr, (vendor, klass) in devs.items():
        d = root / "bus/pci/devices" / addr
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(klass + "\n")
    return str(root)


def fake_modules(root: Path, *names: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules").write_text("".join(f"{n} 1 0 - Live 0x0\n" for n in names))
    return str(root)


def test_nvidia_display_controllers_on_the_pci_bus(tmp_path):
    sys_root = fake_sys(tmp_path / "sys", {
        "0000:00:02.0": ("0x8086", "0x030000"),  # Intel graphics
        "0000:01:00.0": ("0x10de", "0x030000"),  # a GeForce (VGA)
        "0000:01:00.1": ("0x10de", "0x040300"),  # its audio function: not a GPU
        "0000:41:00.0": ("0x10de", "0x030200"),  # a data-centre card (3D controller)
        "0000:42:00.0": ("junk", "0x030000"),
    })
    assert procfs.nvidia_gpus_on_pci(sys_root) == ("0000:01:00.0", "0000:41:00.0")
    assert procfs.nvidia_gpus_on_pci(str(tmp_path / "none")) == ()


def test_without_driver_only_when_no_nvidia_module_is_loaded(tmp_path):
    sys_root = fake_sys(tmp_path / "sys", {"0000:01:00.0": ("0x10de", "0x030000")})
    nouveau = fake_modules(tmp_path / "p1", "nouveau", "snd_hda_intel")
    assert procfs.gpu_without_driver(nouveau, sys_root) == CARD
    for module in ("nvidia", "nvidia_current"):  # Debian's renamed module counts
        assert procfs.gpu_without_driver(fake_modules(tmp_path / module, module), sys_root) is None
    assert procfs.gpu_without_driver(nouveau, fake_sys(tmp_path / "intel", {"0000:00:02.0": ("0x8086", "0x030000")})) \
        is None


def test_doctor_names_the_missing_driver_as_something_to_fix(monkeypatch):
    monkeypatch.setattr(doctor.GpuHost, "gpu", lambda self, config: GpuObs(state="no-driver", error=CARD))
    drv = Driver(False, frozenset(), {}, (), {})
    checks = doctor.checks(Config(), drv, [], True, lambda config, nodes: {})
    assert [(c.name, c.ok, c.message) for c in checks] == [
        ("gpu", False, f"{CARD}; Ollama runs on the CPU meanwhile")]
    assert "apt install nvidia-driver, reboot" in checks[0].advice


def test_the_device_job_says_so_too(tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "SYS", fake_sys(tmp_path / "sys", {"0000:01:00.0": ("0x10de", "0x030000")}))
    monkeypatch.setattr(procfs, "PROC", fake_modules(tmp_path / "proc", "nouveau"))
    monkeypatch.setattr(devices, "complete_killed", lambda config, host: None)
    monkeypatch.setattr(devices, "ensure", lambda config, fix: type("F", (), {"state": "no-driver", "problems": [],
                                                                             "changes": []})())
    said = []
    monkeypatch.setattr(devices.Reporter, "done", lambda self, text, **kw: said.append(text))
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "progress"))
    assert devices.devices_main(None, Config()) == 0
    assert said == [f"{CARD} (running on CPU)"]


# ------------------------------------------------------------- why the module does not work
def installed(tmp_path, kernels=("6.1.0-27-amd64",), dkms=True, name="nvidia-current.ko.xz"):
    """What nvidia-driver leaves: DKMS's tree and the module built for `kernels`."""
    for k in kernels:
        d = tmp_path / "lib-modules" / k / "updates" / "dkms"
        d.mkdir(parents=True)
        (d / name).write_bytes(b"\x00")
    if dkms:
        (tmp_path / "dkms" / "nvidia-current" / "550.163.01").mkdir(parents=True)


def test_a_kernel_update_the_driver_did_not_follow(tmp_path):
    installed(tmp_path)  # built for the previous kernel only
    sys_root = fake_sys(tmp_path / "sys", {"0000:01:00.0": ("0x10de", "0x030000")})
    text = procfs.gpu_without_driver(fake_modules(tmp_path / "p", "snd_hda_intel"), sys_root)
    assert text == ("NVIDIA driver not built for kernel 6.1.0-28-amd64: install linux-headers-6.1.0-28-amd64, "
                    "run dkms autoinstall, reboot (PCI 0000:01:00.0: no nvidia module for the running kernel (DKMS))")


def test_nouveau_or_nova_core_holding_the_card(tmp_path):
    installed(tmp_path, kernels=("6.1.0-28-amd64",))
    sys_root = fake_sys(tmp_path / "sys", {"0000:01:00.0": ("0x10de", "0x030000")})
    drivers = tmp_path / "sys/bus/pci/drivers/nova_core"
    drivers.mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:01:00.0/driver").symlink_to(drivers)
    text = procfs.gpu_without_driver(fake_modules(tmp_path / "p", "snd_hda_intel"), sys_root)
    assert text.startswith("NVIDIA GPU held by nova_core: blacklist it") and "bound to nova_core" in text
    (tmp_path / "sys/bus/pci/devices/0000:01:00.0/driver").unlink()  # not bound, but nouveau loaded
    text = procfs.gpu_without_driver(fake_modules(tmp_path / "q", "nouveau"), sys_root)
    assert text.startswith("NVIDIA GPU held by nouveau")


def test_secure_boot_refusing_the_module(tmp_path):
    installed(tmp_path, kernels=("6.1.0-28-amd64",))
    sys_root = fake_sys(tmp_path / "sys", {"0000:01:00.0": ("0x10de", "0x030000")})
    var = Path(sys_root) / procfs.SECURE_BOOT_VAR
    var.parent.mkdir(parents=True)
    var.write_bytes(b"\x06\x00\x00\x00\x00")  # Secure Boot off: the module just is not loaded
    modules = fake_modules(tmp_path / "p", "snd_hda_intel")
    assert procfs.gpu_without_driver(modules, sys_root).startswith("NVIDIA module not loaded: modprobe nvidia")
    var.write_bytes(b"\x06\x00\x00\x00\x01")
    assert procfs.gpu_without_driver(modules, sys_root) == (
        "NVIDIA module refused by Secure Boot: enroll DKMS's key (mokutil --import /var/lib/dkms/mok.pub) "
        "and reboot (PCI 0000:01:00.0: Secure Boot is on and the nvidia module is not loaded)")


def test_status_says_the_cause_without_the_pci_detail():
    from localaid.policy_gpu import _fragment
    g = GpuObs(state="no-driver", error="NVIDIA GPU held by nouveau: blacklist it (the nvidia-driver package does), "
               "update-initramfs -u, reboot (PCI 0000:01:00.0: bound to nouveau, not nvidia)")
    assert _fragment(g) == "NVIDIA GPU held by nouveau: blacklist it (the nvidia-driver package does), " \
        "update-initramfs -u, reboot"
