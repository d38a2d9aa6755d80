"""An NVIDIA card without its driver: found on the PCI bus (procfs, LOCALAID_SYS), said by
`localaid doctor` and by the device job, while Ollama runs on the CPU."""

from __future__ import annotations

import io
from pathlib import Path

from localaid import log, paths, procfs
from localaid.config import Config
from localaid.procfs import Driver
from localaid.provision import devices
from localaid.provision.devices import doctor
from localaid.records import NO_DRIVER, GpuObs

CARD = f"{NO_DRIVER} (PCI 0000:01:00.0: no nvidia kernel module loaded)"


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
