"""A booted Debian 12 container with a fake NVIDIA GPU and localaid installed from its .deb, for
tests/integration/test_gpu*.py and bench/gpu_recovery.py.

What cannot exist here is faked at its real interface, and nothing else:
- the driver's NVML library: tests/fakes/nvml (libnvidia-ml.so.1 built with gcc on the host,
  installed where the driver puts it, driven by the real nvidia-ml-py). It opens the device
  nodes as the real one does, and its state file /run/fake-nvml/state.json is shared with the
  fake Ollama: used memory and compute processes follow what Ollama holds
  (/run/fake-ollama/gpu-processes), a lost GPU is reported through events;
- the kernel's view of the driver: a /proc tree (devices, modules, driver/nvidia/...) at
  /run/fake-proc, given to localaid's GPU units as LOCALAID_PROC; the PCI bus at /run/fake-sys
  (LOCALAID_SYS) where a test needs one; device nodes are real character devices made with
  mknod (opening them gives ENXIO: no driver behind them);
- modprobe, rmmod, nvidia-modprobe: tests/fakes/bin/fake-kmod, first on PATH, recording calls;
- Ollama: tests/fakes/ollama/ollama as ollama.service (User=ollama, the install script's restart
  settings), discovering the GPU at start, offloading what does not fit in part, losing the GPU
  after start on a fault (/run/fake-ollama/faults.json; /run/fake-ollama/discovery-fail counts
  starts that find no GPU).
The configuration is the shipped defaults but for what the box needs (no install script: the
fake Ollama is there already; Open WebUI off): health.* is not shortened unless a test asks.
Host tools needed: gcc.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from harness import wait_for

TESTS = Path(__file__).resolve().parents[1]
FAKES = TESTS / "fakes"
GIB = 2**30
UVM_MAJOR = 511
SLEEP_HOOK = "/lib/systemd/system-sleep/localaid"
PROCESSES_FILE = "/run/fake-ollama/gpu-processes"
MODEL = "tinyllama:latest"
NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")

CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
  models:
{models}
webui:
  enabled: false
gpu:
  devices:
    mode: {mode}
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


def build_nvml(tmp: Path, wsl: bool = False) -> Path:
    import sys
    sys.path.insert(0, str(TESTS.parent))
    from tests.fakes.nvml import support
    return support.build(tmp, wsl=wsl)


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


def pci_card(c) -> None:
    """The PCI bus at /run/fake-sys (LOCALAID_SYS): the RTX 4070 at 0000:01:00.0, and its audio."""
    for addr, vendor, klass in (("0000:01:00.0", "0x10de", "0x030000"), ("0000:01:00.1", "0x10de", "0x040300"),
                                ("0000:00:00.0", "0x8086", "0x060000")):
        c.write(f"/run/fake-sys/bus/pci/devices/{addr}/vendor", vendor + "\n")
        c.write(f"/run/fake-sys/bus/pci/devices/{addr}/class", klass + "\n")


def nvml_state(c, **kw) -> None:
    state = dict(count=1, name="NVIDIA GeForce RTX 4070", uuid="GPU-5f0c1e6a-fake", memory_total=12 * GIB,
                 memory_used=GIB // 2, temperature=45, utilization=3, xids=[], processes_file=PROCESSES_FILE)
    state.update(kw)
    c.write("/run/fake-nvml/state.json.tmp", json.dumps(state))
    c.run(["mv", "-f", "/run/fake-nvml/state.json.tmp", "/run/fake-nvml/state.json"])


def nvml_update(c, **kw) -> None:
    state = json.loads(c.read("/run/fake-nvml/state.json"))
    state.update(kw)
    nvml_state(c, **state)


def faults(c, **kw) -> None:
    c.write("/run/fake-ollama/faults.json", json.dumps(kw))


def mknod(c, path, major, minor, mode="600", owner="root:root") -> None:
    c.sh(f"rm -f {path}; mknod {path} c {major} {minor}; chmod {mode} {path}; chown {owner} {path}")


def restrictive_nodes(c) -> None:
    """What a restrictive NVreg_DeviceFileMode leaves: root-only nodes, nvidia-uvm missing."""
    c.sh("rm -f /dev/nvidia*")
    mknod(c, "/dev/nvidiactl", 195, 255)
    mknod(c, "/dev/nvidia0", 195, 0)


def make_gpu_box(make_container, nvml_lib, mode="ensure", nodes="good", start_ollama=True, race=False,
                 config_extra="", models=("tinyllama",), driver=True, nvml=None):
    """A container with the fake GPU, user ollama, the fake Ollama unit, then localaid installed.
    driver=False: an NVIDIA card on the PCI bus and no driver at all (no module, no nodes, NVML
    answering "driver not loaded"), localaid's units looking at the fake /proc and /sys.
    models=(): ollama.models left at its default (auto). nvml: the fake NVML's state (memory_total ...)."""
    def setup(c):
        c.copy_in(nvml_lib, "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
        c.run(["ldconfig"])
        c.sh("for t in modprobe rmmod nvidia-modprobe; do ln -sf /opt/fakes/bin/fake-kmod /usr/local/sbin/$t; done")
        c.sh("useradd -r -s /bin/false -U -m -d /usr/share/ollama ollama && useradd -m alice && "
             "mkdir -p /var/lib/fake-ollama/models /run/fake-ollama /run/fake-kmod && "
             "chown -R ollama:ollama /var/lib/fake-ollama /run/fake-ollama && "
             "echo '{}' > /run/fake-ollama/faults.json")
        dropin = FAKE_PROC_DROPIN
        if not driver:
            c.sh("rm -f /dev/nvidia*")
            c.write("/run/fake-proc/modules", "nouveau 2998272 1 - Live 0x0\nsnd_hda_intel 61440 3 - Live 0x0\n")
            c.write("/run/fake-proc/devices", "Character devices:\n  1 mem\n\nBlock devices:\n  7 loop\n")
            pci_card(c)
            dropin = "[Service]\nEnvironment=LOCALAID_PROC=/run/fake-proc LOCALAID_SYS=/run/fake-sys\n"
            c.write("/etc/systemd/system/localaid.service.d/50-test.conf", dropin)
        else:
            set_driver(c, uvm=nodes == "good", mode=0o666 if nodes == "good" else 0o600)
            if nodes == "good":
                for path, major, minor in (("/dev/nvidiactl", 195, 255), ("/dev/nvidia0", 195, 0),
                                           ("/dev/nvidia-uvm", UVM_MAJOR, 0), ("/dev/nvidia-uvm-tools", UVM_MAJOR, 1)):
                    mknod(c, path, major, minor, "666")
            else:
                restrictive_nodes(c)
        for unit in ("localaid-devices.service", "localaid-gpu-recover.service"):
            c.write(f"/etc/systemd/system/{unit}.d/50-test.conf", dropin)
        c.write("/etc/systemd/system/ollama.service", OLLAMA_UNIT)
        if not race:  # as localaid's drop-in does: nodes fixed before Ollama looks for GPUs
            c.write("/etc/systemd/system/ollama.service.d/40-test.conf",
                    "[Unit]\nWants=localaid-devices.service\nAfter=localaid-devices.service\n")
        c.systemctl("daemon-reload")
        nvml_state(c, **({} if driver else {"driver_loaded": False}), **(nvml or {}))
        if start_ollama:
            c.systemctl("enable", "--now", "ollama.service")
            wait_for(lambda: api(c, "/") == "Ollama is running", timeout=20)
            for name in models:
                c.run(["curl", "-sf", "-d", json.dumps({"model": name, "stream": False}),
                       "http://127.0.0.1:11434/api/pull"])

    config = CONFIG.format(mode=mode, models="\n".join(f"    - {m}" for m in models)) + config_extra
    return make_container(install=True, config=config, setup=setup, private_network=True,
                          binds=[(str(FAKES / "ollama"), "/opt/fakes/ollama", True),
                                 (str(FAKES / "bin"), "/opt/fakes/bin", True)])


# ------------------------------------------------------------------------------ looking
def api(c, path, body=None):
    cmd = ["curl", "-s", "--max-time", "5", f"http://127.0.0.1:11434{path}"]
    return c.run(cmd + (["-d", json.dumps(body)] if body is not None else []), check=False).stdout


def loaded(c) -> dict:
    try:
        return {m["name"]: (m["size"], m["size_vram"]) for m in json.loads(api(c, "/api/ps"))["models"]}
    except (ValueError, KeyError):
        return {}


def on_gpu(c, name=MODEL) -> bool:
    size, vram = loaded(c).get(name, (0, -1))
    return size > 0 and vram == size


def status(c) -> str:
    return c.unit_property("localaid.service", "StatusText")


def wait_status(c, text, timeout=40):
    return wait_for(lambda: text in status(c), timeout=timeout, interval=0.2,
                    message=f"STATUS containing {text!r} (last: {status(c)!r})")


def journal(c, unit=None) -> str:
    return c.journal(unit, output="cat")


def ollama_restarts(c) -> list[str]:
    """localaid's restarts of ollama.service, as its journal lines."""
    return [ln for ln in journal(c, "localaid.service").splitlines()
            if re.match(r"(restart|kill-restart|start) ollama\.service:", ln) or "start-job gpu-recover" in ln]


def kmod_log(c) -> list[str]:
    return c.run(["cat", "/run/fake-kmod/log"], check=False).stdout.splitlines()


def gpu_memory_used(c) -> int:
    doc = json.loads(c.read("/run/localaid/status.json"))
    return doc["gpu"]["devices"][0]["memory_used"]


def main_pid(c, unit="ollama.service") -> str:
    return c.unit_property(unit, "MainPID")


def started_at(c, unit="ollama.service") -> float:
    """When systemd last started `unit` (the host and containers share one monotonic clock)."""
    return int(c.unit_property(unit, "ActiveEnterTimestampMonotonic")) / 1e6


def wait_new_start(c, old_pid: str, timeout=30) -> float:
    wait_for(lambda: main_pid(c) not in ("0", old_pid) and c.is_active("ollama.service") == "active",
             timeout=timeout, interval=0.05)
    return started_at(c)


def now() -> float:
    return time.monotonic()
