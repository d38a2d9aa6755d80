"""Gpu (localaid/adapters/gpu.py) against a fake pynvml module: NVML answers no driver double gives
(nvmlInit failing with GPU_IS_LOST, event registration NOT_SUPPORTED, GPU-unavailable events)."""

from __future__ import annotations

import ctypes
import io
import time
from types import SimpleNamespace

import pytest

from localaid import log
from localaid.adapters import gpu as gpu_mod

GIB = 2**30
MIB = 2**20
NOT_SUPPORTED, DRIVER_NOT_LOADED, TIMEOUT, LIBRARY_NOT_FOUND, GPU_IS_LOST, UNKNOWN = 3, 9, 10, 12, 15, 999


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


class FakePynvml:
    """The part of pynvml the adapter calls. `supported`: event mask nvmlDeviceRegisterEvents accepts."""
    nvmlEventTypeGpuUnavailableError = 0x4000

    def __init__(self, supported=0x4008, events=()):
        self.init_error = None  # NVML error code for nvmlInit to fail with
        self.supported = supported
        self.events = list(events)  # (eventType, eventData) to deliver
        self.registered = []  # masks asked for, in order

    def nvmlInit(self):
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return "550.54.14"

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ctypes.c_void_p(i + 1)

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA GeForce RTX 4070"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h.value}"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=12 * GIB, used=GIB)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 50

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=5)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=42, usedGpuMemory=512 * MIB), SimpleNamespace(pid=43, usedGpuMemory=2**64 - 1)]

    def nvmlEventSetCreate(self):
        return object()

    def nvmlEventSetFree(self, event_set):
        pass

    def nvmlDeviceRegisterEvents(self, h, mask, event_set):
        self.registered.append(mask)
        if mask & ~self.supported:
            raise NVMLError(NOT_SUPPORTED)

    def nvmlEventSetWait_v2(self, event_set, ms):
        if self.events:
            kind, data = self.events.pop(0)
            return SimpleNamespace(eventType=kind, eventData=data, device=ctypes.c_void_p(1))
        time.sleep(0.01)
        raise NVMLError(TIMEOUT)


@pytest.fixture
def make(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_mod, "DEVICES_STATE", str(tmp_path / "devices.json"))
    monkeypatch.setattr(gpu_mod, "RESUME_STATE", str(tmp_path / "resume.json"))
    monkeypatch.setattr(gpu_mod, "EVENT_RETRY", 0.02)
    monkeypatch.setattr(gpu_mod, "NONE_RECHECK", 0.0)  # every observe asks NVML again
    made = []

    def make(fake, events=True):
        g = gpu_mod.Gpu(events=events)
        g._nvml = fake
        made.append(g)
        return g
    yield make
    for g in made:
        g.close()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_init_failing_with_gpu_is_lost_is_lost_not_no_gpu(make):
    fake = FakePynvml()
    g = make(fake, events=False)
    assert g.observe().state == "ok"
    g._shutdown()  # as after an error: the next observe initialises NVML again
    fake.init_error = GPU_IS_LOST
    o = g.observe()
    assert o.state == "lost" and o.error.startswith("GPU is lost (fell off the bus)")


def test_init_unknown_error_is_lost_only_after_a_gpu_was_seen(make, monkeypatch):
    monkeypatch.setattr(gpu_mod, "_open_errno", lambda path: 0)  # the node opens
    monkeypatch.setattr(gpu_mod.procfs, "nvidia_gpus_on_pci", lambda *a: ())  # no card on the bus
    fake = FakePynvml()
    fake.init_error = UNKNOWN
    g = make(fake, events=False)
    assert g.observe().state == "none"  # never saw a GPU: nothing to recover
    fake.init_error = None
    assert g.observe().state == "ok"
    g._shutdown()
    fake.init_error = UNKNOWN
    assert g.observe().state == "lost"


@pytest.mark.parametrize("errno_, card, why", [
    # what a device cgroup answers (EPERM): localaid's own sandbox keeps it from the GPU
    (1, (), "; /dev/nvidiactl: Operation not permitted (localaid.service's device policy: a driver loaded "
            "after localaid started?)"),
    (0, ("0000:01:00.0",), ""),  # the node opens and the card is there: NVML cannot talk to it
])
def test_init_unknown_error_before_any_gpu_is_an_error_that_says_why(make, monkeypatch, errno_, card, why):
    monkeypatch.setattr(gpu_mod, "_open_errno", lambda path: errno_)
    monkeypatch.setattr(gpu_mod.procfs, "nvidia_gpus_on_pci", lambda *a: card)
    fake = FakePynvml()
    fake.init_error = UNKNOWN
    o = make(fake, events=False).observe()
    assert (o.state, o.error) == ("error", f"NVML: NVMLError: {UNKNOWN}{why}")


def test_init_refused_for_permissions_is_an_error_not_no_gpu(make):
    fake = FakePynvml()
    fake.init_error = 4  # NVML_ERROR_NO_PERMISSION
    o = make(fake, events=False).observe()
    assert o.state == "error"
    assert "the NVIDIA device nodes' permissions keep localaid out" in o.error


@pytest.mark.parametrize("code, words", [(LIBRARY_NOT_FOUND, "no NVIDIA driver installed"),
                                         (DRIVER_NOT_LOADED, "NVIDIA driver not loaded")])
def test_init_without_driver_stays_no_gpu(make, code, words):
    fake = FakePynvml()
    g = make(fake, events=False)
    assert g.observe().state == "ok"
    g._shutdown()
    fake.init_error = code
    o = g.observe()
    assert o.state == "none" and words in o.error


def test_no_driver_is_asked_again_only_every_ten_seconds(make, monkeypatch):
    monkeypatch.setattr(gpu_mod, "NONE_RECHECK", 10.0)
    now = [100.0]
    fake = FakePynvml()
    fake.init_error = DRIVER_NOT_LOADED
    calls = []
    real_init = fake.nvmlInit
    fake.nvmlInit = lambda: (calls.append(now[0]), real_init())
    g = make(fake, events=False)
    g.clock = lambda: now[0]
    for _ in range(5):
        assert g.observe().state == "none"
        now[0] += 1.0
    assert calls == [100.0]
    now[0] = 100.0 + gpu_mod.NONE_RECHECK
    fake.init_error = None  # the driver came
    assert g.observe().state == "ok" and len(calls) == 2


def test_compute_processes_with_their_memory(make):
    o = make(FakePynvml(), events=False).observe()
    (d,) = o.devices
    assert d.compute_pids == (42, 43)
    assert [(p.pid, p.used_memory) for p in d.processes] == [(42, 512 * MIB), (43, None)]


def test_event_watch_not_supported_stops_once_and_says_so(make, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    fake = FakePynvml(supported=0)
    g = make(fake)
    g.observe()
    wait_for(lambda: g.xid_watch is not None)
    wait_for(lambda: not g._thread.is_alive())
    time.sleep(0.1)  # several EVENT_RETRY periods: no retry
    assert fake.registered == [0x4008, 0x8]  # combined mask, then Xid alone, then nothing more
    o = g.observe()
    assert o.xid_watch == "not supported by this GPU/driver" and o.state == "ok"
    time.sleep(0.1)
    assert fake.registered == [0x4008, 0x8]  # observe() does not start it again
    assert out.getvalue().count("Xid watch stopped: not supported by this GPU/driver") == 1


def test_combined_mask_refused_falls_back_to_xid_alone(make):
    fake = FakePynvml(supported=0x8, events=[(0x8, 48)])
    g = make(fake)
    g.observe()
    wait_for(lambda: g.observe().last_xids)
    assert fake.registered[:2] == [0x4008, 0x8] and g.xid_watch is None


def test_gpu_unavailable_event_counts_as_xid_79_and_counts_accumulate(make):
    fake = FakePynvml(events=[(0x8, 13), (0x4000, 0), (0x8, 13)])
    g = make(fake)
    got = g.observe().xids
    wait_for(lambda: len(g._last_xids) == 3)
    o = g.observe()
    got += o.xids
    assert [(e.xid, e.uuid) for e in got] == [(13, "GPU-1"), (79, "GPU-1"), (13, "GPU-1")]
    assert fake.registered == [0x4008]
    assert o.xid_counts == ((13, 2), (79, 1)) and [e.xid for e in o.last_xids] == [13, 79, 13]
    o = g.observe()
    assert o.xids == () and o.xid_counts == ((13, 2), (79, 1)) and len(o.last_xids) == 3  # kept for the status
