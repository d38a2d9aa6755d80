"""Gpu (localaid/adapters/gpu.py) driving the real nvidia-ml-py against the fake libnvidia-ml.so.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localaid import procfs
from tests.fakes.nvml import support

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.fixture(scope="module")
def nvml(tmp_path_factory):
    """The fake library loaded under its soname, so pynvml's CDLL("libnvidia-ml.so.1") finds it."""
    tmp = tmp_path_factory.mktemp("nvml")
    try:
        lib, pydir = support.load(tmp)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"fake NVML unavailable: {e}")
    state = tmp / "state.json"
    dev = support.fake_dev(tmp / "dev", count=2)  # the nodes the library opens, as plain files
    os.environ["FAKE_NVML_STATE"] = str(state)
    os.environ["FAKE_NVML_DEV"] = str(dev)
    yield {"state": state, "lib": lib, "pydir": pydir, "dev": dev, "tmp": tmp}
    os.environ.pop("FAKE_NVML_STATE", None)
    os.environ.pop("FAKE_NVML_DEV", None)


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
    assert sorted(procfs.cgroup_pids("/system.slice/ollama.service", bases)) == [10, 11, 12]
    assert procfs.cgroup_pids("", bases) == () and procfs.cgroup_pids("/nope.service", bases) == ()


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


# ------------------------------------------------------------------ what the double does like the driver
def live_and_dead_pid():
    dead = subprocess.Popen(["true"])
    dead.wait()
    return os.getpid(), dead.pid


def test_memory_and_compute_processes_follow_what_holds_the_gpu(nvml, gpu):
    """The fake Ollama writes its runner's "PID BYTES" line: used memory and the process list
    move with it; a line of a process that is gone counts for nothing (the driver freed it)."""
    procs = nvml["tmp"] / "gpu-processes"
    live, dead = live_and_dead_pid()
    state(nvml, compute_pids=[], processes_file=str(procs))
    procs.write_text("")
    (d,) = gpu.observe().devices
    assert (d.memory_used, d.compute_pids) == (GIB, ())
    procs.write_text(f"{live} {3 * GIB}\n{dead} {5 * GIB}\n")
    (d,) = gpu.observe().devices
    assert d.memory_used == 4 * GIB and d.compute_pids == (live,)
    assert [(p.pid, p.used_memory) for p in d.processes] == [(live, 3 * GIB)]
    procs.write_text("")  # unloaded: freed
    assert gpu.observe().devices[0].memory_used == GIB


def wait_registered(gpu):
    deadline = time.monotonic() + 5
    while gpu._thread is None or not gpu._thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # the thread registers its event set


def drain(gpu, want, seconds=3.0):
    got, deadline = (), time.monotonic() + seconds
    while time.monotonic() < deadline and len(got) < want:
        got += gpu.observe().xids
        time.sleep(0.05)
    time.sleep(0.3)
    return got + gpu.observe().xids


@pytest.mark.parametrize("lost_xid", [79, 0], ids=["xid-event", "gpu-unavailable-event"])
def test_a_gpu_falling_off_the_bus_is_lost_and_reported_through_events_once(nvml, gpu, lost_xid):
    state(nvml)
    assert gpu.observe().state == "ok"
    wait_registered(gpu)
    state(nvml, lost=True, lost_xid=lost_xid)
    got = drain(gpu, 1)
    o = gpu.observe()
    assert (o.state, o.error) == ("lost", "GPU is lost (fell off the bus)")
    # an Xid 79 either way: the unavailable event stands for it
    assert [(e.xid, e.uuid) for e in got] == [(79, "GPU-abc")]
    state(nvml)  # back (a driver reload): a second loss is a new event
    assert gpu.observe().state == "ok"
    time.sleep(0.3)  # (a driver reload takes longer than the event set's 20 ms look)
    state(nvml, lost=True, lost_xid=lost_xid)
    assert [e.xid for e in drain(gpu, 1)] == [79]


def test_init_unknown_error_is_an_error_until_a_gpu_was_seen_then_lost(nvml, gpu):
    state(nvml, init_error=999)
    o = gpu.observe()
    assert o.state == "error" and "Unknown Error" in o.error
    state(nvml)
    assert gpu.observe().state == "ok"  # seen
    state(nvml, lost=True)
    assert gpu.observe().state == "lost"  # a failed query: NVML is initialised anew next time
    state(nvml, init_error=999)
    o = gpu.observe()
    assert o.state == "lost" and o.error == "GPU is lost (fell off the bus): NVML init: NVMLError_Unknown: Unknown Error"


def test_the_library_opens_the_nodes(nvml, gpu):
    state(nvml)
    (nvml["dev"] / "nvidia1").unlink()  # the second GPU's node is gone
    state(nvml, count=2)
    o = gpu.observe()
    assert o.state == "error" and "Unknown Error" in o.error
    (nvml["dev"] / "nvidia1").touch()
    assert gpu.observe().state == "ok"
    (nvml["dev"] / "nvidiactl").unlink()  # no control node: the driver is not there
    try:
        from localaid.adapters import gpu as gpu_mod
        fresh = gpu_mod.Gpu(events=False)
        o = fresh.observe()
        assert (o.state, o.error) == ("none", "no NVIDIA GPU found (NVIDIA driver not loaded)")
    finally:
        (nvml["dev"] / "nvidiactl").touch()


def test_nodes_the_user_may_not_open_are_insufficient_permissions(nvml, tmp_path):
    """What NVML answers as a user the nodes' permissions keep out: an "error" that says so, not
    "no GPU". Run as nobody (root opens any file), from a directory nobody can read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    import shutil
    import tempfile
    shared = Path(tempfile.mkdtemp(prefix="nvml-perm-"))
    try:
        shared.chmod(0o755)
        shutil.copy(nvml["lib"], shared / "libnvidia-ml.so.1")
        shutil.copy(Path(nvml["pydir"]) / "pynvml.py", shared / "pynvml.py")
        dev = support.fake_dev(shared / "dev", count=1)
        for f in (dev, *dev.iterdir()):
            f.chmod(0o755 if f.is_dir() else 0o600)  # root's: nobody may not open them
        support.write_state(shared / "state.json", count=1, memory_total=12 * GIB)
        (shared / "state.json").chmod(0o644)
        code = ("from localaid.adapters.gpu import Gpu; o = Gpu(events=False).observe(); "
                "print(o.state); print(o.error)")
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}{os.pathsep}{shared}", "LD_LIBRARY_PATH": str(shared),
               "FAKE_NVML_STATE": str(shared / "state.json"), "FAKE_NVML_DEV": str(dev)}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, user=65534,
                           group=65534, extra_groups=[], cwd=str(shared))
        assert r.returncode == 0, r.stderr
        state_, error = r.stdout.splitlines()
        assert state_ == "error" and error.startswith("NVML: NVMLError_NoPermission: Insufficient Permissions: "
                                                      "the NVIDIA device nodes' permissions keep localaid out"), error
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def fake_pci(root: Path, devices: dict[str, tuple[str, str]]) -> Path:
    for addr, (vendor, klass) in devices.items():
        d = root / "bus/pci/devices" / addr
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(klass + "\n")
    return root


def test_an_nvidia_card_without_its_driver_is_no_driver(nvml, gpu, tmp_path, monkeypatch):
    from localaid import procfs
    from localaid.records import NO_DRIVER
    sys_root = fake_pci(tmp_path / "sys", {"0000:00:02.0": ("0x8086", "0x030000"),   # Intel graphics
                                           "0000:01:00.0": ("0x10de", "0x030000"),   # the card
                                           "0000:01:00.1": ("0x10de", "0x040300")})  # its audio function
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text("snd_hda_intel 61440 3 - Live 0x0\nnouveau 2998272 1 - Live 0x0\n")
    monkeypatch.setattr(procfs, "SYS", str(sys_root))
    monkeypatch.setattr(procfs, "PROC", str(tmp_path / "proc"))
    state(nvml, driver_loaded=False)  # libnvidia-ml present, the module not loaded
    o = gpu.observe()
    assert o.state == "no-driver"
    assert o.error == f"{NO_DRIVER} (PCI 0000:01:00.0: no nvidia kernel module loaded)"
    # the driver loaded (but NVML still says not loaded): that is not "without driver"
    (tmp_path / "proc/modules").write_text("nvidia 56320000 0 - Live 0x0\n")
    from localaid.adapters import gpu as gpu_mod
    fresh = gpu_mod.Gpu(events=False)
    assert fresh.observe().state == "none"
