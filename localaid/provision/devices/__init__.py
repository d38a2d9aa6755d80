"""NVIDIA device nodes and who may open them; the GPU recovery ladder; the resume hook.

    localaid provision devices   (localaid-devices.service, root oneshot; also started by the
                                  udev rule when the driver (re)loads, and by ollama.service)
    localaid gpu recover         (localaid-gpu-recover.service: the recovery ladder)
    localaid gpu resumed KIND    (the system-sleep hook, after a resume)

    nodes.py    the nodes the loaded driver needs; making the missing ones
    access.py   who may open them, by gpu.devices.mode; modprobe.d; the idempotent pass `ensure`
    ladder.py   stop ollama → reload nvidia_uvm → recreate nodes → check → start ollama, journalled
    resume.py   after a resume from sleep
    doctor.py   `localaid doctor`'s GPU checks

The nodes: /dev/nvidiactl, /dev/nvidia<minor> per GPU, /dev/nvidia-modeset (when nvidia_modeset
is loaded), /dev/nvidia-uvm and /dev/nvidia-uvm-tools, /dev/nvidia-caps/nvidia-cap<minor>.

Access, by gpu.devices.mode (service users: ollama, and open-webui when webui.gpu):
  ensure  create what is missing; a service user that cannot open a node gets access through
          the node's group (added to it) or, when the group is root's or has no access,
          through gpu.devices.group (node re-grouped, g+rw). Nobody loses access: a node whose
          group grants access to users besides root is not re-grouped (a warning says so).
  group   strict: every node root:<group> 0660, service users in the group; the same owner
          and mode go to the driver (/etc/modprobe.d/localaid-nvidia.conf), so that
          nvidia-modprobe, run by any CUDA program, keeps them (nvidia-uvm's nodes it makes
          0666 regardless: the next run of this job, at the module's udev event, fixes those).
  world   every node 0666 (the driver's default, the seed's `chmod 666 /dev/nvidia*`).
  off     nothing is touched.
The udev rule shipped in the package runs this again after every driver load, so the result
survives reboots and driver reloads. Every change is logged with mode/owner before and after,
and /run/localaid/devices.json records when nodes last changed: an Ollama started before that
saw no GPU (it looks once, at start) and the supervisor restarts it. An entry that is not a
character device is never changed, and no link is followed.
"""

from __future__ import annotations

import os

from localaid import procfs
from localaid.procfs import (PROC, Driver, _module_loaded, _read, char_majors, driver_state, gpu_without_driver,
                             uvm_loaded)
from localaid.provision.devices import doctor
from localaid.provision.devices.access import (MODPROBE_CONF, driver_options, ensure, fix_access, group_members,
                                               may_open, service_users, user_ids)
from localaid.provision.devices.doctor import access_matrix
from localaid.provision.devices.ladder import LADDER_JOB, LADDER_LIMIT, GpuHost, complete_killed, recover
from localaid.provision.devices.reboot import announce_if_mismatch
from localaid.provision.devices.nodes import DEV, Fix, Node, describe, expected_nodes
from localaid.provision.devices.resume import DEVICES_UNIT, resumed_main
from localaid.provision.job import JobError, Reporter
from localaid.vram import GIB, MIB, vram_advice

__all__ = ["DEV", "DEVICES_UNIT", "GIB", "JOB", "LADDER_JOB", "LADDER_LIMIT", "MIB", "MODPROBE_CONF", "PROC",
           "Driver", "Fix", "GpuHost", "Node", "_module_loaded", "_read", "access_matrix", "char_majors",
           "describe", "devices_main", "doctor_checks", "driver_options", "driver_state", "ensure",
           "expected_nodes", "fix_access", "gpu_recover_main", "group_members", "may_open", "resumed_main",
           "service_users", "user_ids", "uvm_loaded", "vram_advice"]

JOB = "devices"
WSL_NODES = ("WSL2: the GPU is /dev/dxg (WSL's own, mode 0666); no NVIDIA nodes, udev rule or kernel module "
             "to manage here: nothing to do")
WSL_NO_LADDER = ("WSL2: no NVIDIA module or nodes to reload inside the VM; the only reset is `wsl --shutdown` "
                 "in Windows, then start WSL again")


def devices_main(args, config) -> int:
    """`localaid provision devices`: localaid-devices.service. First the rest of a recovery
    ladder a kill interrupted (it may have left Ollama stopped), then the nodes."""
    if procfs.on_wsl2():  # no /dev/nvidia*, no nvidia module: nothing here would apply
        Reporter(JOB).done(WSL_NODES)
        return 0
    host = GpuHost()
    complete_killed(config, host)
    announce_if_mismatch(Reporter(None))
    mode = config.gpu.devices.mode
    if mode == "off":
        Reporter(None).say("gpu.devices.mode is off: device nodes left alone")
        return 0
    rep = Reporter(JOB)
    rep.step("checking NVIDIA device nodes")
    try:
        fix = ensure(config, Fix(rep, host))
    except (OSError, JobError) as e:
        rep.failed(f"device nodes: {e}", getattr(e, "tail", ()))
        return 1
    if fix.state == "no-driver":
        text = (gpu_without_driver() or "NVIDIA driver not loaded: no device nodes to check") + " (running on CPU)"
    elif fix.problems:
        text = "device nodes: " + "; ".join(fix.problems)
    elif fix.changes:
        text = f"device nodes fixed ({len(fix.changes)} change{'s' if len(fix.changes) != 1 else ''}, mode {mode})"
    else:
        text = f"device nodes ok (mode {mode})"
    if fix.problems:
        rep.failed(text)
        return 1
    rep.done(text)
    return 0


def gpu_recover_main(args, config, systemd=None) -> int:
    """`localaid gpu recover`: localaid-gpu-recover.service. Stop ollama, reload nvidia_uvm,
    recreate the device nodes, start ollama. Exit 0 when the GPU answers NVML afterwards.
    Under WSL2 there is nothing to reload: it says what resets the GPU there, and fails."""
    if procfs.on_wsl2():
        Reporter(LADDER_JOB).failed(WSL_NO_LADDER)
        return 1
    return recover(config, GpuHost(systemd), Reporter(LADDER_JOB))


def doctor_checks(config) -> list:
    drv = driver_state()
    out = doctor.checks(config, drv, expected_nodes(drv), os.geteuid() == 0, access_matrix)
    if procfs.on_wsl2():  # after the GPU check: NVML is loaded, the library can be named
        from localaid.provision.devices import wsl
        out += wsl.checks(config)
    return out
