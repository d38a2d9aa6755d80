"""NVIDIA device nodes and the GPU watch, in booted Debian 12 containers with a fake GPU.

What cannot exist here is faked at its real interface, and nothing else:
- the driver's NVML library: tests/fakes/nvml (libnvidia-ml.so.1 built with gcc on the host,
  installed where the driver puts it, driven by the real nvidia-ml-py); its state file
  /run/fake-nvml/state.json is also what the fake Ollama reads to "see" a GPU;
- the kernel's view of the driver: a /proc tree (devices, modules, driver/nvidia/...) at
  /run/fake-proc, given to localaid's GPU units as LOCALAID_PROC; device nodes are real
  character devices made with mknod (opening them gives ENXIO: no driver behind them);
- modprobe, rmmod, nvidia-modprobe: tests/fakes/bin/fake-kmod, first on PATH, recording calls;
- Ollama: tests/fakes/ollama/ollama as ollama.service (User=ollama), with GPU discovery at start.
Host tools needed: gcc.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from harness import wait_for

TESTS = Path(__file__).resolve().parents[1]
FAKES = TESTS / "fakes"
GIB = 2**30
UVM_MAJOR = 511
SLEEP_HOOK = "/lib/systemd/system-sleep/localaid"

CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
  models:
    - tinyllama
webui:
  enabled: false
gpu:
  devices:
    mode: {mode}
health:
  interval: 1s
  model_load_grace: 20s
  start_grace:
    ollama: 5s
"""

OLLAMA_UNIT = """\
[Unit]
Description=fake Ollama (tests/fakes/ollama) as the install script would set it up
[Service]
ExecStart=/usr/bin/python3 /opt/fakes/ollama/ollama serve
Environment=OLLAMA_MODELS=/var/lib/fake-ollama/models
User=ollama
Group=ollama
Restart=always
RestartSec=3
[Install]
WantedBy=multi-user.target
"""

FAKE_PROC_DROPIN = "[Service]\nEnvironment=LOCALAID_PROC=/run/fake-proc\n"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def nvml_lib(tmp_path_factory):
    import sys
    sys.path.insert(0, str(TESTS.parent))
    from tests.fakes.nvml import support
    try:
        return support.build(tmp_path_factory.mktemp("nvml"))
    except RuntimeError as e:
        pytest.fail(str(e))


def proc_devices(uvm: bool) -> str:
    return ("Character devices:\n  1 mem\n  5 /dev/tty\n195 nvidia-frontend\n"
            + (f"{UVM_MAJOR} nvidia-uvm\n" if uvm else "") + "\nBlock devices:\n  7 loop\n")


def set_driver(c, uvm: bool = True, modeset: bool = False, mode: int = 0o666) -> None:
    """The fake /proc: driver loaded with one GPU (minor 0), nvidia_uvm loaded or not, and the
    node mode the driver's NVreg_DeviceFileMode asks for (nvidia-modprobe applies it)."""
    mods = ["nvidia 56320000 2 nvidia_uvm, Live 0x0"] + (["nvidia_uvm 1540096 0 - Live 0x0"] if uvm else []) \
        + (["nvidia_modeset 1335296 0 - Live 0x0"] if modeset else [])
    c.write("/run/fake-proc/modules", "\n".join(mods) + "\n")
    c.write("/run/fake-proc/devices", proc_devices(uvm))
    c.write("/run/fake-proc/driver/nvidia/gpus/0000:01:00.0/information",
            "Model: \t\t NVIDIA GeForce RTX 4070\nDevice Minor: \t 0\n")
    c.write("/run/fake-proc/driver/nvidia/params", f"DeviceFileUID: 0\nDeviceFileGID: 0\nDeviceFileMode: {mode}\n")


def nvml_state(c, **kw) -> None:
    state = dict(count=1, name="NVIDIA GeForce RTX 4070", uuid="GPU-5f0c1e6a-fake", memory_total=12 * GIB,
                 memory_used=GIB // 2, temperature=45, utilization=3, xids=[],
                 compute_pids_file=c.ollama_procs)
    state.update(kw)
    c.write("/run/fake-nvml/state.json.tmp", json.dumps(state))
    c.run(["mv", "-f", "/run/fake-nvml/state.json.tmp", "/run/fake-nvml/state.json"])


def nvml_update(c, **kw) -> None:
    state = json.loads(c.read("/run/fake-nvml/state.json"))
    state.update(kw)
    nvml_state(c, **state)


def mknod(c, path, major, minor, mode="600", owner="root:root") -> None:
    c.sh(f"rm -f {path}; mknod {path} c {major} {minor}; chmod {mode} {path}; chown {owner} {path}")


def restrictive_nodes(c) -> None:
    """What a restrictive NVreg_DeviceFileMode leaves: root-only nodes, nvidia-uvm missing."""
    c.sh("rm -f /dev/nvidia*")
    mknod(c, "/dev/nvidiactl", 195, 255)
    mknod(c, "/dev/nvidia0", 195, 0)


def make_gpu_box(make_container, nvml_lib, mode="ensure", nodes="good", start_ollama=True, race=False,
                 config_extra=""):
    """A container with the fake GPU, user ollama, the fake Ollama unit, then localaid installed."""
    def setup(c):
        c.copy_in(nvml_lib, "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
        c.run(["ldconfig"])
        c.sh("for t in modprobe rmmod nvidia-modprobe; do ln -sf /opt/fakes/bin/fake-kmod /usr/local/sbin/$t; done")
        c.sh("useradd -r -s /bin/false -U -m -d /usr/share/ollama ollama && useradd -m alice && "
             "mkdir -p /var/lib/fake-ollama/models /run/fake-ollama /run/fake-kmod && "
             "chown -R ollama:ollama /var/lib/fake-ollama && echo '{}' > /run/fake-ollama/faults.json")
        set_driver(c, uvm=nodes == "good", mode=0o666 if nodes == "good" else 0o600)
        if nodes == "good":
            for path, major, minor in (("/dev/nvidiactl", 195, 255), ("/dev/nvidia0", 195, 0),
                                       ("/dev/nvidia-uvm", UVM_MAJOR, 0), ("/dev/nvidia-uvm-tools", UVM_MAJOR, 1)):
                mknod(c, path, major, minor, "666")
        else:
            restrictive_nodes(c)
        for unit in ("localaid-devices.service", "localaid-gpu-recover.service"):
            c.write(f"/etc/systemd/system/{unit}.d/50-test.conf", FAKE_PROC_DROPIN)
        c.write("/etc/systemd/system/ollama.service", OLLAMA_UNIT)
        if not race:  # as localaid's drop-in does: nodes fixed before Ollama looks for GPUs
            c.write("/etc/systemd/system/ollama.service.d/40-test.conf",
                    "[Unit]\nWants=localaid-devices.service\nAfter=localaid-devices.service\n")
        c.systemctl("daemon-reload")
        c.ollama_procs = "/sys/fs/cgroup/systemd/system.slice/ollama.service/cgroup.procs"
        nvml_state(c)
        if start_ollama:
            c.systemctl("enable", "--now", "ollama.service")
            wait_for(lambda: api(c, "/") == "Ollama is running", timeout=20)
            procs = c.sh("ls /sys/fs/cgroup/systemd/system.slice/ollama.service/cgroup.procs "
                         "/sys/fs/cgroup/system.slice/ollama.service/cgroup.procs 2>/dev/null || true").stdout.split()
            c.ollama_procs = procs[0] if procs else c.ollama_procs
            nvml_state(c)
            c.run(["curl", "-sf", "-d", '{"model":"tinyllama","stream":false}', "http://127.0.0.1:11434/api/pull"])

    return make_container(install=True, config=CONFIG.format(mode=mode) + config_extra, setup=setup,
                          private_network=True,
                          binds=[(str(FAKES / "ollama"), "/opt/fakes/ollama", True),
                                 (str(FAKES / "bin"), "/opt/fakes/bin", True)])


def api(c, path):
    return c.run(["curl", "-s", "--max-time", "3", f"http://127.0.0.1:11434{path}"], check=False).stdout


def loaded(c) -> dict:
    try:
        return {m["name"]: (m["size"], m["size_vram"]) for m in json.loads(api(c, "/api/ps"))["models"]}
    except (ValueError, KeyError):
        return {}


def on_gpu(c, name="tinyllama:latest") -> bool:
    size, vram = loaded(c).get(name, (0, -1))
    return size > 0 and vram == size


def status(c) -> str:
    return c.unit_property("localaid.service", "StatusText")


def wait_status(c, text, timeout=40):
    return wait_for(lambda: text in status(c), timeout=timeout, interval=0.2,
                    message=f"STATUS containing {text!r} (last: {status(c)!r})")


def ls(c, path) -> str:
    """mode owner:group of a node, as `stat` shows it."""
    return c.run(["stat", "-c", "%A %U:%G", path]).stdout.strip()


def can_open(c, user, path) -> str:
    """'ok' (or 'ok-enxio': access granted, no driver behind it) or the error, opening as `user`."""
    code = ("import errno, os, sys\ntry:\n    os.close(os.open(sys.argv[1], os.O_RDWR))\n    print('ok')\n"
            "except OSError as e:\n    print('ok-enxio' if e.errno == errno.ENXIO else errno.errorcode[e.errno])")
    return c.run(["python3", "-c", code, path], user=user).stdout.strip()


def journal(c, unit=None) -> str:
    return c.journal(unit, output="cat")


def kmod_log(c) -> list[str]:
    return c.run(["cat", "/run/fake-kmod/log"], check=False).stdout.splitlines()


def run_devices(c):
    return c.systemctl("start", "localaid-devices.service", check=False, timeout=120)


def run_udev_rule(c):
    """Run the shipped rule's RUN+= command for the module "add" event (udevd cannot run in the
    container: no real /sys), then wait for the job it queued (--no-block) to finish."""
    rule = next(ln for ln in c.read("/lib/udev/rules.d/70-localaid-nvidia.rules").splitlines()
                if ln.startswith('ACTION=="add", SUBSYSTEM=="module"'))
    command = re.search(r'RUN\+="([^"]+)"', rule).group(1)
    since = c.unit_property("localaid-devices.service", "ExecMainExitTimestampMonotonic")
    c.sh(command)
    wait_for(lambda: c.unit_property("localaid-devices.service", "ExecMainExitTimestampMonotonic") != since
             and c.is_active("localaid-devices.service") in ("inactive", "failed"), timeout=60)
    assert c.unit_property("localaid-devices.service", "Result") == "success", journal(c, "localaid-devices.service")


def settle_first_devices_job(c) -> None:
    """localaid.service starts localaid-devices.service as soon as it is installed, racing the
    test's own look at the nodes: wait for that first run to end, so a test sets the nodes up
    after it."""
    wait_for(lambda: c.unit_property("localaid-devices.service", "ExecMainExitTimestampMonotonic") not in ("", "0")
             and c.is_active("localaid-devices.service") in ("inactive", "failed"), timeout=60)


NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


# ------------------------------------------------------------------------------ device nodes
@pytest.mark.parametrize("mode", ["ensure", "group", "world"])
def test_modes_repair_restrictive_nodes_and_survive_a_driver_reload(make_container, nvml_lib, mode):
    c = make_gpu_box(make_container, nvml_lib, mode=mode, nodes="bad", start_ollama=False)
    settle_first_devices_job(c)
    set_driver(c, uvm=False, mode=0o600)
    restrictive_nodes(c)
    c.sh("rm -f /run/fake-kmod/log")
    assert can_open(c, "ollama", "/dev/nvidia0") == "EACCES"
    r = run_devices(c)
    assert r.returncode == 0, journal(c, "localaid-devices.service")
    # nvidia-uvm was missing with its module unloaded: made the way the driver's tools do
    assert any(line.startswith("nvidia-modprobe -u -c 0") for line in kmod_log(c)), kmod_log(c)
    for node in NODES:
        assert c.exists(node), node
        assert can_open(c, "ollama", node) == "ok-enxio", (node, ls(c, node))
    expect = {
        "ensure": {"/dev/nvidiactl": "crw-rw---- root:video", "/dev/nvidia0": "crw-rw---- root:video",
                   "/dev/nvidia-uvm": "crw-rw-rw- root:root", "/dev/nvidia-uvm-tools": "crw-rw-rw- root:root"},
        "group": {n: "crw-rw---- root:video" for n in NODES},
        "world": {"/dev/nvidiactl": "crw-rw-rw- root:root", "/dev/nvidia0": "crw-rw-rw- root:root",
                  "/dev/nvidia-uvm": "crw-rw-rw- root:root", "/dev/nvidia-uvm-tools": "crw-rw-rw- root:root"},
    }[mode]
    assert {n: ls(c, n) for n in NODES} == expect
    # nobody beyond the group in ensure/group; ensure took access from nobody (uvm stays 0666)
    alice = {n: can_open(c, "alice", n) for n in NODES}
    if mode == "ensure":
        assert alice == {"/dev/nvidiactl": "EACCES", "/dev/nvidia0": "EACCES",
                         "/dev/nvidia-uvm": "ok-enxio", "/dev/nvidia-uvm-tools": "ok-enxio"}
    elif mode == "group":
        assert set(alice.values()) == {"EACCES"}
    else:
        assert set(alice.values()) == {"ok-enxio"}
        assert "every local user may use the GPU" in journal(c, "localaid-devices.service")
    if mode != "world":  # world needs no group
        assert "video" in c.run(["id", "-nG", "ollama"]).stdout.split()
    log = journal(c, "localaid-devices.service")
    if mode != "world":
        assert re.search(r"device node /dev/nvidia0: crw------- root:root -> crw-rw---- root:video mode=" + mode, log), log
    # group mode also tells the driver, so that nvidia-modprobe keeps the nodes 0660
    if mode == "group":
        assert "NVreg_DeviceFileMode=0660" in c.read("/etc/modprobe.d/localaid-nvidia.conf")
    else:
        assert not c.exists("/etc/modprobe.d/localaid-nvidia.conf")
    marker = json.loads(c.read("/run/localaid/devices.json"))
    assert marker["mode"] == mode and marker["changes"] and marker["changed_mono"] > 0

    # The driver is reloaded (say, an upgrade): its nodes come back root-only, nvidia-uvm later.
    c.sh("rm -f /dev/nvidia*")
    set_driver(c, uvm=False, mode=0o600)
    restrictive_nodes(c)
    c.sh("rm -f /run/fake-kmod/log")
    run_udev_rule(c)  # the module's "add" event: what the udev rule runs, as udev runs it
    assert {n: ls(c, n) for n in NODES} == expect
    assert all(can_open(c, "ollama", n) == "ok-enxio" for n in NODES)

    # doctor proves access by opening each node as each service user
    r = c.run(["localaid", "doctor"], env={"LOCALAID_PROC": "/run/fake-proc"}, check=False)
    assert "gpu access ollama: ollama may open the nodes, but no driver answers behind nvidiactl, nvidia0, " \
           "nvidia-uvm, nvidia-uvm-tools (ENXIO)" in r.stdout, r.stdout
    assert "[ok  ] gpu: RTX 4070 12 GB (driver 550.54.14)" in r.stdout, r.stdout


def test_udev_rule_and_units_installed(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib, start_ollama=False)
    rule = c.read("/lib/udev/rules.d/70-localaid-nvidia.rules")
    assert 'SUBSYSTEM=="module", KERNEL=="nvidia|nvidia_uvm|nvidia_modeset|nvidia_drm|nvidia_current*"' in rule
    assert "RUN+=\"/bin/systemctl --no-block start localaid-devices.service\"" in rule
    for unit in ("localaid-devices.service", "localaid-gpu-recover.service"):
        assert c.unit_property(unit, "LoadState") == "loaded"
    assert c.run(["test", "-x", SLEEP_HOOK], check=False).returncode == 0


def test_mknod_when_there_is_no_nvidia_modprobe(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib, nodes="bad", start_ollama=False)
    settle_first_devices_job(c)
    c.run(["rm", "/usr/local/sbin/nvidia-modprobe"])
    c.sh("rm -f /dev/nvidia-uvm /dev/nvidia-uvm-tools")
    set_driver(c, uvm=True)  # module loaded, node missing
    assert run_devices(c).returncode == 0
    # made for the service users' group: a node that did not exist gave nobody access
    assert c.run(["stat", "-c", "%t:%T %A %G", "/dev/nvidia-uvm"]).stdout.strip() == f"{UVM_MAJOR:x}:0 crw-rw---- video"
    assert "device node /dev/nvidia-uvm created (char 511:0)" in journal(c, "localaid-devices.service")


def test_driver_loaded_after_localaid_started_restarts_it_once(make_container, nvml_lib):
    """DeviceAllow=char-nvidia* is resolved when localaid starts: a driver loaded later (first
    boot after a kernel upgrade: DKMS builds it late) is out of its reach until it restarts."""
    c = make_gpu_box(make_container, nvml_lib, start_ollama=False)
    c.write("/etc/systemd/system/localaid.service.d/50-test.conf", FAKE_PROC_DROPIN)
    c.write("/run/fake-proc/devices", "Character devices:\n  1 mem\n\nBlock devices:\n  7 loop\n")
    c.systemctl("daemon-reload")
    c.systemctl("restart", "localaid.service")
    c.wait_for_unit("localaid.service")
    pid = c.unit_property("localaid.service", "MainPID")
    set_driver(c)  # the driver comes
    wait_for(lambda: c.unit_property("localaid.service", "MainPID") not in ("0", pid), timeout=30)
    c.wait_for_unit("localaid.service")
    time.sleep(11)  # the new instance saw the driver at its start: no second restart
    log = journal(c, "localaid.service")
    assert log.count("NVIDIA driver loaded after localaid started") == 1, log


def test_off_touches_nothing(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib, mode='"off"', nodes="bad", start_ollama=False)
    assert run_devices(c).returncode == 0
    assert ls(c, "/dev/nvidia0") == "crw------- root:root" and not c.exists("/dev/nvidia-uvm")
    assert kmod_log(c) == []


# ------------------------------------------------------------------------------ supervision
def test_gpu_status_and_model_on_gpu(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib)
    wait_status(c, "ollama ok, 1 model warm · gpu RTX 4070 12 GB")
    assert on_gpu(c)


def test_boot_race_restarts_ollama_once_the_nodes_are_fixed(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib, nodes="bad", race=True)
    # Ollama started before the nodes were usable: the daemon's devices job fixes them, then
    # Ollama is restarted because it only looks for GPUs at start.
    wait_for(lambda: "cause=boot-race" in journal(c, "localaid.service"), timeout=40)
    wait_status(c, "gpu RTX 4070 12 GB")
    wait_for(lambda: on_gpu(c), timeout=30, message="tinyllama on the GPU")
    log = journal(c, "localaid.service")
    assert "restart ollama.service: ok cause=boot-race" in log, log
    assert "inference compute" in journal(c, "ollama.service")


def test_cpu_fallback_restarts_ollama(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib)
    wait_for(lambda: on_gpu(c), timeout=40, message="tinyllama on the GPU")
    c.write("/run/fake-ollama/faults.json", '{"cpu": true}')
    wait_for(lambda: "cause=cpu-fallback" in journal(c, "localaid.service"), timeout=20)
    c.write("/run/fake-ollama/faults.json", "{}")
    wait_for(lambda: on_gpu(c), timeout=40, message="tinyllama back on the GPU")
    log = journal(c, "localaid.service")
    assert re.search(r"restart ollama.service: ok cause=cpu-fallback evidence=\"tinyllama:latest: 0.0 of", log), log
    wait_status(c, "ollama ok, 1 model warm · gpu RTX 4070 12 GB")


def test_application_xid_does_nothing(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib)
    wait_status(c, "gpu RTX 4070 12 GB")
    time.sleep(1.5)  # the event thread has registered
    nvml_update(c, xids=[13])
    wait_for(lambda: "application Xid 13" in journal(c, "localaid.service"), timeout=15)
    time.sleep(3)
    assert "gpu-recover" not in journal(c, "localaid.service")
    assert kmod_log(c) == [] or all("nvidia_uvm" not in line for line in kmod_log(c))
    assert "gpu RTX 4070 12 GB" in status(c)


def test_gpu_lost_ladder_fails_and_says_reboot_without_looping(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib)
    wait_for(lambda: on_gpu(c), timeout=40, message="tinyllama on the GPU")
    time.sleep(1.5)
    nvml_update(c, xids=[79], lost=True)
    wait_status(c, "GPU lost (XID 79): reboot required", timeout=60)
    log = journal(c, "localaid.service")
    order = [log.index(s) for s in ("critical Xid 79", "start-job gpu-recover: ok cause=xid",
                                    "GPU recovery (XID 79) failed: GPU still lost")]
    assert order == sorted(order), log
    assert kmod_log(c) == ["modprobe -r nvidia-uvm", "modprobe nvidia-uvm"]
    wait_for(lambda: c.is_active("ollama.service") == "active", timeout=20)  # back, on the CPU
    time.sleep(8)  # no second attempt
    assert kmod_log(c) == ["modprobe -r nvidia-uvm", "modprobe nvidia-uvm"]
    assert "GPU lost (XID 79): reboot required" in status(c)
    assert json.loads(c.read("/run/localaid/progress/gpu-recover.json"))["state"] == "failed"


def test_critical_xid_ladder_heals(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib)
    wait_for(lambda: on_gpu(c), timeout=40, message="tinyllama on the GPU")
    time.sleep(1.5)
    c.write("/run/fake-kmod/heal-on-uvm-load", "")
    nvml_update(c, xids=[48], lost=True)
    wait_for(lambda: "GPU recovered (XID 48)" in journal(c, "localaid.service"), timeout=60)
    assert on_gpu(c)
    log = journal(c, "localaid.service")
    steps = [log.index(s) for s in ("critical Xid 48", "start-job gpu-recover: ok cause=xid",
                                    "GPU recovery (XID 48) done", "GPU recovered (XID 48)")]
    assert steps == sorted(steps), log
    # the model was loaded again (by the supervisor's preload) before the recovery was declared
    assert log.index("start-job gpu-recover") < log.rindex("preload tinyllama") < log.index("GPU recovered"), log
    job = journal(c, "localaid-gpu-recover.service")
    steps = [job.index(s) for s in ("GPU recovery: stopping ollama", "GPU recovery: reloading nvidia_uvm",
                                    "GPU recovery: recreating device nodes", "GPU recovery: starting ollama",
                                    "GPU recovered in")]
    assert steps == sorted(steps), job
    wait_status(c, "ollama ok, 1 model warm · gpu RTX 4070 12 GB")


def test_resume_hook_checks_at_once_and_runs_the_ladder(make_container, nvml_lib):
    c = make_gpu_box(make_container, nvml_lib)
    wait_for(lambda: on_gpu(c), timeout=40, message="tinyllama on the GPU")
    wait_status(c, "gpu RTX 4070 12 GB")
    c.write("/run/fake-kmod/heal-on-uvm-load", "")
    # Suspend broke the CUDA state: Ollama's model now runs on the CPU until nvidia_uvm is reloaded.
    c.write("/run/fake-ollama/faults.json", '{"cpu": true}')
    t0 = time.monotonic()
    r = c.run([SLEEP_HOOK, "post", "suspend"], check=False)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "start-job gpu-recover: ok cause=resume" in journal(c, "localaid.service"), timeout=20)
    detect = time.monotonic() - t0
    wait_for(lambda: "GPU recovered (after resume)" in journal(c, "localaid.service"), timeout=60)
    assert on_gpu(c)
    assert detect < 5, detect
    assert "cause=cpu-fallback" not in journal(c, "localaid.service")  # the ladder, not a plain restart
    assert c.run([SLEEP_HOOK, "pre", "suspend"]).returncode == 0


def test_a_killed_ladder_is_completed_and_ollama_started_again(make_container, nvml_lib):
    """The ladder is killed after it stopped Ollama (nvidia_uvm's unload hangs): the unit's
    ExecStopPost completes it from the step it had recorded, and Ollama runs again."""
    c = make_gpu_box(make_container, nvml_lib)
    wait_for(lambda: on_gpu(c), timeout=40, message="tinyllama on the GPU")
    c.write("/run/fake-kmod/hang-on-uvm-unload", "")
    c.systemctl("start", "--no-block", "localaid-gpu-recover.service")
    wait_for(lambda: "modprobe -r nvidia-uvm" in kmod_log(c), timeout=30)
    assert c.is_active("ollama.service") == "inactive"
    assert json.loads(c.read("/run/localaid/gpu-recover.steps.json"))["step"] == "reload nvidia_uvm"
    c.systemctl("kill", "--signal=KILL", "localaid-gpu-recover.service")
    wait_for(lambda: c.is_active("localaid-gpu-recover.service") in ("inactive", "failed"), timeout=120)
    wait_for(lambda: c.is_active("ollama.service") == "active", timeout=30)
    job = journal(c, "localaid-gpu-recover.service")
    assert 'GPU recovery: completing the ladder a killed run left step="reload nvidia_uvm"' in job, job
    assert not c.exists("/run/localaid/gpu-recover.steps.json")
    assert kmod_log(c)[-2:] == ["modprobe -r nvidia-uvm", "modprobe nvidia-uvm"]
    assert json.loads(c.read("/run/localaid/progress/gpu-recover.json"))["state"] == "done"
