"""WSL2: detection, the sandbox's /dev/dxg line, the device job and ladder standing aside, the GPU
policy's words for a reset only Windows can do, doctor's WSL checks, and WSL's NVML (the fake's
WSL build through the real nvidia-ml-py and localaid's Gpu adapter, in a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from localaid import policy_gpu, procfs
from localaid.config import Config
from localaid.provision.devices import wsl
from localaid.provision.ollama import render_dropin
from localaid.records import EMPTY, GpuDevice, GpuObs, JobObs, Observation, Probe, ServiceObs, UnitState
from tests.fakes.nvml import support

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30
WSL_RELEASE = "5.15.167.4-microsoft-standard-WSL2"
RTX = GpuDevice(0, "NVIDIA GeForce RTX 4070", "GPU-1", 12 * GIB, 1 * GIB, compute_pids=None)
WSL_OK = GpuObs(state="ok", devices=(RTX,), platform="wsl2")


# ------------------------------------------------------------------------------ detection
@pytest.mark.parametrize("release, wsl2", [
    (WSL_RELEASE, True),
    ("6.6.87.2-microsoft-standard-WSL2", True),
    ("5.10.16.3-MICROSOFT-standard-wsl2+", True),  # any case, a suffix after it (a self-built kernel)
    ("4.4.0-19041-Microsoft", False),  # WSL1: no GPU, no systemd
    ("6.1.0-28-amd64", False),
    ("", False),
])
def test_wsl2_by_kernel_release(release, wsl2):
    assert procfs.wsl2_release(release) is wsl2
    assert procfs.platform_of(release, False) == ("wsl2" if wsl2 else "linux")


def test_dxg_alone_is_wsl2_a_plain_file_is_not(tmp_path):
    assert procfs.platform_of("6.1.0-28-amd64", True) == "wsl2"  # a WSL kernel with another release string
    fake = tmp_path / "dxg"
    fake.write_text("")
    assert procfs.platform("6.1.0-28-amd64", str(fake)) == "linux"  # not a character device
    assert procfs.platform("6.1.0-28-amd64", "/dev/null") == "wsl2"  # any char device at that path counts
    assert procfs.platform(WSL_RELEASE, str(tmp_path / "none")) == "wsl2"


def test_the_kernel_release_seam_reaches_a_fresh_process():
    code = "from localaid import procfs; print(procfs.platform(), procfs.on_wsl2())"
    env = {**os.environ, "LOCALAID_KERNEL_RELEASE": WSL_RELEASE, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["wsl2", "True"]


# ------------------------------------------------------------------------------ Ollama's sandbox
def test_dropin_allows_dxg_by_path_under_wsl2_only():
    cfg = Config().ollama
    linux, wsl2 = render_dropin(cfg), render_dropin(cfg, wsl=True)
    assert "dxg" not in linux
    added = [ln for ln in wsl2.splitlines() if ln not in linux.splitlines()]
    assert [ln for ln in added if not ln.startswith("#")] == ["DeviceAllow=/dev/dxg rw"]
    assert "DevicePolicy=closed" in wsl2 and "char-misc" not in wsl2  # never the whole misc major


def test_open_webui_with_the_gpu_allows_dxg_under_wsl2_only():
    from localaid.provision.webui.service import render_dropin as webui_dropin
    c = Config()
    c = replace(c, webui=replace(c.webui, gpu=True))
    assert "dxg" not in webui_dropin(c, []) and "DeviceAllow=/dev/dxg rw" in webui_dropin(c, [], wsl=True)
    assert webui_dropin(Config(), [], wsl=True) == ""  # no GPU for Open WebUI: nothing to allow


def test_localaid_service_allows_dxg_narrowly_and_only_where_it_exists(tmp_path):
    """The generator's drop-in under WSL2 (a character device at the path), nothing elsewhere:
    systemd is never asked for a device that cannot exist."""
    unit = (REPO / "units" / "localaid.service").read_text().splitlines()
    assert "DevicePolicy=closed" in unit and not any("dxg" in ln or "char-misc" in ln
                                                      for ln in unit if ln.startswith("DeviceAllow="))
    generator = str(REPO / "units" / "localaid-wsl2-generator")
    for node, expected in (("/dev/null", True), (str(tmp_path / "absent"), False), (str(tmp_path), False)):
        out = tmp_path / f"gen-{expected}-{len(node)}"
        out.mkdir()
        subprocess.run([generator, str(out), str(out / "early"), str(out / "late")], check=True,
                       env={"LOCALAID_DXG": node, "PATH": "/usr/bin:/bin"})
        dropin = out / "localaid.service.d" / "50-wsl2-dxg.conf"
        assert dropin.exists() == expected, node
        if expected:
            lines = [ln for ln in dropin.read_text().splitlines() if ln and not ln.startswith("#")]
            assert lines == ["[Service]", "DeviceAllow=/dev/dxg rw"]


# ------------------------------------------------------------------------------ policy
def obs(now, gpu, models=(), job=None):
    unit = UnitState("ollama.service", "loaded", "active", "running", active_enter_mono=0.0)
    so = ServiceObs("ollama", unit, None, Probe(True), models=tuple(models))
    jobs = {"gpu-recover": job} if job is not None else {}
    return Observation(now=now, services=MappingProxyType({"ollama": so}), gpu=gpu, jobs=MappingProxyType(jobs))


def test_status_names_the_platform():
    assert policy_gpu.decide_gpu(Config(), obs(1, WSL_OK), EMPTY, 1)[2] == "gpu RTX 4070 12 GB (WSL2)"
    assert policy_gpu.decide_gpu(Config(), obs(1, replace(WSL_OK, platform="linux")), EMPTY, 1)[2] == \
        "gpu RTX 4070 12 GB"
    none = GpuObs(state="none", platform="wsl2")
    assert policy_gpu.decide_gpu(Config(), obs(1, none), EMPTY, 1)[2] == "no NVIDIA GPU found (WSL2): running on CPU"


def test_lost_under_wsl2_says_wsl_shutdown_and_starts_no_ladder():
    job = JobObs("gpu-recover", UnitState("localaid-gpu-recover.service", "loaded", "inactive", "dead"))
    lost = GpuObs(state="lost", error="GPU is lost", platform="wsl2")
    actions, h, fragment, notes = policy_gpu.decide_gpu(Config(), obs(10, lost, job=job), EMPTY, 10)
    assert actions == ()
    assert "wsl --shutdown" in fragment and "(WSL2)" in fragment and "reboot" not in fragment
    assert any("no recovery ladder" in n and "wsl --shutdown" in n for n in notes), notes
    again = policy_gpu.decide_gpu(Config(), obs(20, lost, job=job), h, 20)
    assert again[0] == () and again[3] == ()  # said once
    back = policy_gpu.decide_gpu(Config(), obs(30, WSL_OK, job=job), again[1], 30)
    assert back[2] == "gpu RTX 4070 12 GB (WSL2)" and back[0] == ()


def test_unavailable_processes_and_utilisation_are_not_a_fallback():
    """WSL's NVML lists no compute processes (None) and no utilisation: a model on the GPU is fine."""
    from localaid.records import LoadedModel
    on_gpu = LoadedModel("tinyllama:latest", GIB, GIB)
    gpu = replace(WSL_OK, devices=(replace(RTX, memory_used=2 * GIB, utilization=None),), ollama_pids=(4242,))
    h = EMPTY
    for t in range(0, 400, 5):
        actions, h, fragment, _ = policy_gpu.decide_gpu(Config(), obs(1000 + t, gpu, (on_gpu,)), h, 1000 + t)
        assert actions == () and fragment == "gpu RTX 4070 12 GB (WSL2)"


def test_cpu_start_under_wsl2_is_restarted_as_on_debian():
    from localaid.records import LoadedModel
    on_cpu = LoadedModel("tinyllama:latest", GIB, 0)
    actions, *_ = policy_gpu.decide_gpu(Config(), obs(1000, WSL_OK, (on_cpu,)), EMPTY, 1000)
    assert [(a.kind, a.cause) for a in actions] == [("restart", "cpu-fallback")]


# ------------------------------------------------------------------------------ doctor
@pytest.mark.parametrize("text, ok", [
    ("[boot]\nsystemd=true\n", True),
    ("[boot]\nsystemd = True  # since 0.67.6\n", True),
    ("[automount]\nenabled=true\n[boot]\nsystemd=false\n", False),
    ("[network]\nhostname=box\n", False),
    ("not an ini file [", False),
    (None, False),
])
def test_doctor_systemd_in_wsl_conf(text, ok):
    c = wsl.systemd_check(text)
    assert c.ok is ok
    if not ok:
        assert "[boot] systemd=true" in c.advice and "wsl --shutdown" in c.advice


def test_doctor_idle_timeout_is_a_warning_naming_the_setting():
    c = wsl.idle_check({"/mnt/c/Users/ana/.wslconfig": "[wsl2]\nvmIdleTimeout=3600000\n"})
    assert c.ok is None and "vmIdleTimeout=3600000" in c.message and ".wslconfig" in c.advice
    assert "not set (60000 ms)" in wsl.idle_check({"/mnt/c/Users/ana/.wslconfig": "[wsl2]\nmemory=8GB\n"}).message
    assert "no .wslconfig found" in wsl.idle_check({}).message


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("0.0.0.0", True), ("::", True), ("localhost", True),
                                      ("192.168.1.20", None), ("::1", None)])
def test_doctor_windows_reaches_open_webui_through_localhost_forwarding(host, ok):
    c = wsl.windows_check(True, host, 3000)
    assert c.ok is ok
    assert ("http://localhost:3000" in c.message) and (ok or "127.0.0.1:3000" in c.advice)
    assert wsl.windows_check(False, host, 3000).skipped


MAPS = ("7f0000000000-7f0000001000 r-xp 00000000 08:01 1234 {}\n"
        "7f0000002000-7f0000003000 r--p 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n")


def test_doctor_names_the_nvml_loaded_and_fails_a_linux_copy_shadowing_wsls():
    wsl_lib = "/usr/lib/wsl/drivers/nv_dispi.inf_amd64_1234/libnvidia-ml.so.1"
    assert wsl.loaded_nvml(MAPS.format(wsl_lib)) == wsl_lib
    assert wsl.loaded_nvml(MAPS.format("/usr/lib/x86_64-linux-gnu/libm.so.6")) is None
    assert wsl.nvml_check(wsl_lib, ()).ok is True
    shadow = wsl.nvml_check("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.127.05", ())
    assert shadow.ok is False and "shadowing" in shadow.message and "apt purge" in shadow.advice
    unused = wsl.nvml_check(wsl_lib, ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.127.05",))
    assert unused.ok is None and "unused" in unused.message
    assert wsl.nvml_check(None, ()).ok is None


# ------------------------------------------------------------------------------ device job
def test_device_job_and_ladder_stand_aside_under_wsl2(monkeypatch, capsys):
    import localaid.provision.devices as devices
    from localaid.provision.devices import resume
    monkeypatch.setattr(procfs, "on_wsl2", lambda: True)
    touched = []
    monkeypatch.setattr(devices, "ensure", lambda *a, **k: touched.append("ensure"))
    monkeypatch.setattr(devices, "recover", lambda *a, **k: touched.append("recover"))
    monkeypatch.setattr(devices, "complete_killed", lambda *a, **k: touched.append("complete_killed"))
    monkeypatch.setattr(devices, "Reporter", _Said)
    monkeypatch.setattr(resume, "Reporter", _Said)
    _Said.lines = []
    assert devices.devices_main(None, Config()) == 0
    assert devices.gpu_recover_main(None, Config()) == 1
    assert resume.resumed_main(None, Config()) == 0
    assert touched == []
    assert [k for k, _ in _Said.lines] == ["done", "failed", "say"]
    assert "nothing to do" in _Said.lines[0][1] and "wsl --shutdown" in _Said.lines[1][1]


class _Said:
    lines: list = []

    def __init__(self, job, *a, **k):
        pass

    def done(self, text, **k):
        self.lines.append(("done", text))

    def failed(self, text, *a, **k):
        self.lines.append(("failed", text))

    def say(self, text, **k):
        self.lines.append(("say", text))


# ------------------------------------------------------------------------------ WSL's NVML
OBSERVE = """
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from localaid.adapters.gpu import Gpu
g = Gpu()
out = []
for _ in range(3):
    o = g.observe()
    out.append({"state": o.state, "platform": o.platform, "error": o.error, "xid_watch": o.xid_watch,
                "util": [d.utilization for d in o.devices], "pids": [d.compute_pids for d in o.devices]})
    time.sleep(0.2)
alive = g._thread is not None
g.close()
print(json.dumps({"obs": out, "event_thread": alive}))
"""


@pytest.fixture(scope="module")
def wsl_nvml(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nvml-wsl")
    try:
        lib = support.build(tmp / "lib", wsl=True)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.fail(f"fake NVML (WSL build) cannot be built: {e}")
    return lib, support.pynvml_dir(tmp)


def observe_wsl(wsl_nvml, tmp_path, **state):
    lib, pydir = wsl_nvml
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "dxg").touch()
    support.write_state(tmp_path / "state.json", count=1, memory_total=12 * GIB, memory_used=GIB, **state)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(lib.parent), "FAKE_NVML_STATE": str(tmp_path / "state.json"),
           "FAKE_NVML_DEV": str(dev), "LOCALAID_KERNEL_RELEASE": WSL_RELEASE, "LOCALAID_RUN_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", OBSERVE, str(REPO), str(pydir)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize("code", [3, 999])  # NOT_SUPPORTED, and UNKNOWN as some drivers answer
def test_wsl_nvml_unsupported_queries_are_unavailable_never_lost(wsl_nvml, tmp_path, code):
    got = observe_wsl(wsl_nvml, tmp_path, wsl_unsupported=code)
    for o in got["obs"]:
        assert (o["state"], o["platform"]) == ("ok", "wsl2"), o
        assert o["util"] == [None] and o["pids"] == [None], o
        assert "WSL2" in o["xid_watch"]
    assert got["event_thread"] is False  # no Xid watch under WSL2


def test_wsl_nvml_with_a_new_driver_lists_utilisation_and_processes(wsl_nvml, tmp_path):
    got = observe_wsl(wsl_nvml, tmp_path, wsl_new_driver=True, utilization=7, compute_pids=[4242])
    assert got["obs"][0]["util"] == [7] and got["obs"][0]["pids"] == [[4242]], got


def test_wsl_nvml_lost_is_lost(wsl_nvml, tmp_path):
    got = observe_wsl(wsl_nvml, tmp_path, lost=True)
    assert got["obs"][0]["state"] == "lost", got
