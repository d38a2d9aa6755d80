"""`localaid models` VRAM advice (localaid/cli/models.py) and `localaid doctor`'s GPU checks
(localaid/provision/devices/ doctor_checks): advice for configured models, pulled or not;
the per-user device access test only as root."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from dataclasses import replace
from types import SimpleNamespace

import pytest

from localaid.adapters.ollama import InstalledModel, RunningModel
from localaid.cli import doctor, models
from localaid.config import Config, ModelSpec
from localaid.provision import devices
from localaid.records import GpuDevice, GpuObs, Probe

GIB = 2**30


def config(*names):
    c = Config()
    return replace(c, ollama=replace(c.ollama, models=tuple(ModelSpec(n) for n in names)))


class FakeClient:
    INSTALLED = (InstalledModel("llama3:latest", int(5.2e9)), InstalledModel("big:70b", int(40e9)))
    LOADED = (RunningModel("llama3:latest", int(6e9), int(6e9)),)

    def __init__(self, url, timeout=5.0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def tags(self):
        return self.INSTALLED

    def running(self):
        return self.LOADED


def run_models(monkeypatch, cfg, gpu_total, json_out=False):
    monkeypatch.setattr(models, "OllamaClient", FakeClient)
    monkeypatch.setattr(models, "gpu_memory", lambda config: gpu_total)
    out = io.StringIO()
    with redirect_stdout(out):
        assert models.run(SimpleNamespace(json=json_out), cfg) == 0
    return out.getvalue()


def test_models_says_what_fits_the_gpu_and_what_is_not_pulled(monkeypatch):
    text = run_models(monkeypatch, config("llama3", "qwen2.5:7b"), 12 * GIB)
    lines = {ln.split()[0]: ln for ln in text.splitlines()[1:]}
    assert "5.2 GB model fits this 12 GB GPU" in lines["llama3:latest"]
    assert "40.0 GB model needs" in lines["big:70b"] and "Models up to 7.9 GB fit" in lines["big:70b"]
    assert lines["qwen2.5:7b"].split()[1] == "-" and lines["qwen2.5:7b"].endswith("not pulled yet: size unknown")
    assert "llama3" not in lines  # configured as "llama3": the installed llama3:latest


def test_models_without_gpu_runs_on_cpu(monkeypatch):
    doc = json.loads(run_models(monkeypatch, config("llama3"), None, json_out=True))
    notes = {m["name"]: m["note"] for m in doc["models"]}
    assert notes == {"llama3:latest": "no NVIDIA GPU: runs on CPU", "big:70b": "no NVIDIA GPU: runs on CPU"}
    assert doc["gpu_memory"] is None


def test_vram_note_reuses_vram_advice():
    assert models.vram_note(int(5.2e9), 12 * GIB) == devices.vram_advice(int(5.2e9), 12 * GIB)
    assert models.vram_note(0, 12 * GIB) == (None, "not pulled yet: size unknown")
    assert models.vram_note(int(5.2e9), None) == (None, "no NVIDIA GPU: runs on CPU")


def test_gpu_memory_from_nvml(monkeypatch):
    from localaid.adapters import gpu as gpu_mod

    class FakeGpu:
        def __init__(self, config, events=True):
            assert events is False

        def observe(self):
            return self.obs

        def close(self):
            pass
    FakeGpu.obs = GpuObs(state="ok", devices=(GpuDevice(0, "a", "GPU-a", 8 * GIB, 0), GpuDevice(1, "b", "GPU-b", 24 * GIB, 0)))
    monkeypatch.setattr(gpu_mod, "Gpu", FakeGpu)
    assert models.gpu_memory(Config()) == 24 * GIB
    FakeGpu.obs = GpuObs(state="none", error="no NVIDIA GPU found")
    assert models.gpu_memory(Config()) is None


# ------------------------------------------------------------------------------------- doctor
@pytest.fixture
def gpu_machine(tmp_path, monkeypatch):
    """A loaded driver with one 12 GB GPU and its nodes (plain files), Ollama listing llama3."""
    from localaid.adapters import gpu as gpu_mod
    from localaid.adapters import http
    from tests.unit.test_devices import fake_proc
    proc, dev = fake_proc(tmp_path), tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidiactl", "nvidia0", "nvidia-uvm", "nvidia-uvm-tools"):
        (dev / name).write_text("")
    drv = devices.driver_state(proc)
    monkeypatch.setattr(devices, "driver_state", lambda: drv)
    real_expected = devices.expected_nodes
    monkeypatch.setattr(devices, "expected_nodes", lambda d: real_expected(d, proc, str(dev)))

    class FakeGpu:
        def __init__(self, config, events=True):
            pass

        def observe(self):
            return GpuObs(state="ok", devices=(GpuDevice(0, "NVIDIA GeForce RTX 4070", "GPU-a", 12 * GIB, GIB),))

        def close(self):
            pass
    monkeypatch.setattr(gpu_mod, "Gpu", FakeGpu)
    tags = {"models": [{"name": "llama3:latest", "size": int(5.2e9)}]}
    monkeypatch.setattr(http, "request", lambda url, timeout: (Probe(True, 0.001, 200), tags))
    opened = []
    monkeypatch.setattr(devices, "access_matrix",
                        lambda cfg, nodes: opened.append(nodes) or {"ollama": {p: 99 for p in nodes}})
    return opened


def test_doctor_as_non_root_skips_the_per_user_open_test(gpu_machine, monkeypatch):
    monkeypatch.setattr(devices.os, "geteuid", lambda: 1000)
    checks = devices.doctor_checks(config())
    text = doctor.render(checks)
    assert "[skip] device access per user: run as root (sudo localaid doctor) to test" in text.splitlines()
    assert "FAIL" not in text and gpu_machine == [] and doctor.exit_code(checks) == 0


def test_doctor_as_root_opens_the_nodes_as_each_user(gpu_machine, monkeypatch):
    monkeypatch.setattr(devices.os, "geteuid", lambda: 0)
    text = doctor.render(devices.doctor_checks(config()))
    assert "[FAIL] gpu access ollama: ollama cannot open nvidiactl: error" in text and len(gpu_machine) == 1
    assert "skip" not in text


def test_doctor_advises_on_pulled_and_unpulled_configured_models(gpu_machine, monkeypatch):
    monkeypatch.setattr(devices.os, "geteuid", lambda: 1000)
    lines = doctor.render(devices.doctor_checks(config("llama3", "qwen2.5:7b"))).splitlines()
    assert any(ln.startswith("[ok  ] vram llama3: 5.2 GB model fits this 12 GB GPU") for ln in lines)
    i = lines.index("[warn] vram qwen2.5:7b: not pulled yet: size unknown")
    assert lines[i + 1].strip().startswith("→ localaid pull qwen2.5:7b")


def test_doctor_says_when_it_cannot_advise(gpu_machine, monkeypatch):
    from localaid.adapters import http
    monkeypatch.setattr(devices.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(http, "request", lambda url, timeout: (Probe(False, 0.0, None, "connection refused"), None))
    lines = doctor.render(devices.doctor_checks(config("llama3"))).splitlines()
    assert "[warn] vram: no VRAM advice: cannot list Ollama's models (connection refused)" in lines
