"""NVIDIA device nodes and who may open them, in booted Debian 12 containers with a fake GPU and
localaid installed from its .deb: the access modes, the udev rule, nodes made without
nvidia-modprobe, a driver loaded after localaid started. The box: gpu_box.py."""

from __future__ import annotations

import json
import re
import time

import pytest

from gpu_box import (FAKE_PROC_DROPIN, NODES, SLEEP_HOOK, UVM_MAJOR, journal, kmod_log, make_gpu_box,
                     restrictive_nodes, set_driver)
from harness import wait_for


def ls(c, path) -> str:
    """mode owner:group of a node, as `stat` shows it."""
    return c.run(["stat", "-c", "%A %U:%G", path]).stdout.strip()


def can_open(c, user, path) -> str:
    """'ok' (or 'ok-enxio': access granted, no driver behind it) or the error, opening as `user`."""
    code = ("import errno, os, sys\ntry:\n    os.close(os.open(sys.argv[1], os.O_RDWR))\n    print('ok')\n"
            "except OSError as e:\n    print('ok-enxio' if e.errno == errno.ENXIO else errno.errorcode[e.errno])")
    return c.run(["python3", "-c", code, path], user=user).stdout.strip()


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
