"""Gpu (localaid/adapters/gpu.py) driving the real nvidia-ml-py against the fake libnvidia-ml.so.1."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.nvml import support

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.fixture(scope="module")
def nvml(tmp_path_factory):
    """The fake library loaded under its soname, so pynvml's CDLL("libnvidia-ml.so.1") finds it."""
    tmp = tmp_path_factory.mktemp("nvml")
    try:
        lib = support.build(tmp / "lib")
        pydir = support.pynvml_dir(tmp)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"fake NVML unavailable: {e}")
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    if str(pydir) not in sys.path:
        sys.path.append(str(pydir))
    state = tmp / "state.json"
    os.environ["FAKE_NVML_STATE"] = str(state)
    yield {"state": state, "lib": lib, "pydir": pydir}
    os.environ.pop("FAKE_NVML_STATE", None)


@pytest.fixture
def gpu(nvml, tmp_path, monkeypatch):
    from localaid.adapters import gpu as gpu_mod
    monkeypatch.setattr(gpu_mod, "DEVICES_STATE", str(tmp_path / "devices.json"))
    monkeypatch.setattr(gpu_mod, "RESUME_STATE", str(tmp_path / "resume.json"))
    monkeypatch.setattr(gpu_mod, "EVENT_RETRY", 0.1)
    g = gpu_mod.Gpu()
    yield g
    g.close()


def state(nvml, **kw):
    base = dict(count=1, name="NVIDIA GeForce RTX 4070", uuid="GPU-abc", memory_total=12 * GIB,
                memory_used=GIB, temperature=51, utilization=7, compute_pids=[11, 22], xids=[])
    base.update(kw)
    support.write_state(nvml["state"], **base)


def test_observe_reads_devices(nvml, gpu):
    state(nvml)
    o = gpu.observe()
    assert o.state == "ok" and o.driver == "550.54.14"
    (d,) = o.devices
    assert (d.index, d.name, d.uuid, d.memory_total, d.memory_used) == (0, "NVIDIA GeForce RTX 4070", "GPU-abc",
                                                                        12 * GIB, GIB)
    assert (d.temperature, d.utilization, d.compute_pids) == (51, 7, (11, 22))
    state(nvml, count=2, compute_pids=[])
    o = gpu.observe()
    assert [d.uuid for d in o.devices] == ["GPU-abc", "GPU-abc-1"] and o.devices[0].compute_pids == ()


def test_gpu_lost_and_back(nvml, gpu):
    state(nvml)
    assert gpu.observe().state == "ok"
    state(nvml, lost=True)
    o = gpu.observe()
    assert (o.state, o.error, o.devices) == ("lost", "GPU is lost (fell off the bus)", ())
    state(nvml)
    assert gpu.observe().state == "ok"


def test_driver_not_loaded_is_no_gpu(nvml, gpu):
    state(nvml, driver_loaded=False)
    o = gpu.observe()
    assert o.state == "none" and o.error == "no NVIDIA GPU found (NVIDIA driver not loaded)"
    state(nvml)
    assert gpu.observe().state == "none"  # NVML is asked again only NONE_RECHECK later
    from localaid.adapters import gpu as gpu_mod
    gpu.clock = lambda: time.monotonic() + gpu_mod.NONE_RECHECK
    assert gpu.observe().state == "ok"  # the driver loaded later: found without a restart


def test_zero_devices_is_no_gpu(nvml, gpu):
    state(nvml, count=0)
    assert gpu.observe().state == "none"


def test_xid_events_are_queued_for_the_next_observe(nvml, gpu):
    state(nvml, xids=[31])  # before registration: not delivered (as the real library)
    assert gpu.observe().xids == ()
    deadline = time.monotonic() + 5
    while gpu._thread is None or not gpu._thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # the thread registers its event set
    t0 = time.monotonic()
    state(nvml, xids=[31, 79, 13])
    got = ()
    while len(got) < 2 and time.monotonic() < deadline:
        got += gpu.observe().xids
        time.sleep(0.05)
    assert [(e.xid, e.uuid) for e in got] == [(79, "GPU-abc"), (13, "GPU-abc")]
    assert all(t0 <= e.at <= time.monotonic() for e in got)
    assert gpu.observe().xids == ()  # each event once


def test_observe_is_fast_and_never_blocks_on_the_event_thread(nvml, gpu):
    state(nvml)
    gpu.observe()
    t0 = time.perf_counter()
    for _ in range(20):
        gpu.observe()
    assert (time.perf_counter() - t0) / 20 < 0.05


def test_markers_and_cgroup(nvml, gpu, tmp_path, monkeypatch):
    state(nvml)
    (tmp_path / "devices.json").write_text('{"changed_mono": 123.5}')
    o = gpu.observe()
    assert o.nodes_changed_at == 123.5
    (tmp_path / "resume.json").write_text('{"mono": 77.0}')
    assert gpu.observe().resumed_at == 77.0


def test_cgroup_pids_include_subgroups(tmp_path):
    from localaid.adapters import gpu as gpu_mod
    v1 = tmp_path / "systemd"  # the name=systemd hierarchy of a cgroup v1 host
    (v1 / "system.slice/ollama.service/runner").mkdir(parents=True)
    (v1 / "system.slice/ollama.service/cgroup.procs").write_text("10\n11\n")
    (v1 / "system.slice/ollama.service/runner/cgroup.procs").write_text("12\n")
    bases = (str(tmp_path / "v2-absent"), str(v1))
    assert sorted(gpu_mod.cgroup_pids("/system.slice/ollama.service", bases)) == [10, 11, 12]
    assert gpu_mod.cgroup_pids("", bases) == () and gpu_mod.cgroup_pids("/nope.service", bases) == ()


def test_no_library_means_no_gpu_and_says_why(nvml, tmp_path):
    """A process without libnvidia-ml.so.1 (no driver installed)."""
    code = ("from localaid.adapters.gpu import Gpu; o = Gpu(events=False).observe(); "
            "print(o.state); print(o.error)")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(nvml["pydir"])])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == ["none",
                                "no NVIDIA GPU found (libnvidia-ml.so.1 not found: no NVIDIA driver installed)"]


def test_vendor_dir_fallback(nvml, tmp_path):
    """Without pynvml on sys.path, the copy in paths.VENDOR_DIR is used."""
    code = ("import sys; from localaid import paths; paths.VENDOR_DIR = sys.argv[1]; "
            "from localaid.adapters import gpu; print(gpu.import_pynvml().__file__)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(nvml["pydir"])], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == str(Path(nvml["pydir"]) / "pynvml.py")
