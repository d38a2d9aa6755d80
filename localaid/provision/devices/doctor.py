"""`localaid doctor`'s GPU checks: the GPU as NVML sees it, the nodes the driver needs, whether
each service user really opens them (as root: a child process per user opens every node), and
whether the configured models fit the card's memory."""

from __future__ import annotations

import errno
import os
from typing import Callable

from localaid import distro as distros
from localaid.procfs import PROC, Driver, distro, kernels_without_module
from localaid.provision.devices.access import service_users, user_ids
from localaid.provision.devices.ladder import GpuHost
from localaid.provision.devices.nodes import Node, describe, node_stat
from localaid.records import NO_DRIVER, Check

FIX = "systemctl start localaid-devices.service (or set gpu.devices.mode)"
WSL_DRIVER = ("under WSL2 the GPU comes with NVIDIA's Windows driver: install or update it in Windows; "
              "install no Linux NVIDIA driver inside WSL")


def _open_as(path: str, uid: int, gid: int, groups) -> int:
    """errno of open(path, O_RDWR) by a child running as uid/gid/groups; 0 on success."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
                code = 0
            except OSError as e:
                code = e.errno if 0 < e.errno < 99 else 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def access_matrix(config, dev_nodes: list[str]) -> dict[str, dict[str, int]]:
    """{user: {node: errno}} by really opening each node as each service user."""
    out = {}
    for user in service_users(config):
        ids = user_ids(user)
        if ids is None:
            continue
        uid, gid, groups = ids
        out[user] = {p: _open_as(p, uid, gid, groups) for p in dev_nodes}
    return out


def checks(config, drv: Driver, nodes: list[Node], root: bool,
           matrix: Callable[[object, list[str]], dict[str, dict[str, int]]] = access_matrix) -> list[Check]:
    """The checks for the driver state `drv` and its `nodes` (read by the caller). root: the
    per-user open test can run (it needs setgroups/setuid)."""
    from localaid.policy_gpu import gpu_label
    out = []
    obs = GpuHost().gpu(config)
    if obs.state == "ok":
        out.append(Check("gpu", True, f"{gpu_label(obs)} (driver {obs.driver or '?'})"))
        out += _driver_for_ollama(config, obs)
    elif obs.state == "none":
        out.append(Check("gpu", None, f"{obs.error or 'no NVIDIA GPU found'}: running on CPU",
                         WSL_DRIVER if obs.platform == "wsl2" else distros.gpu_speed_advice(distro())))
    elif obs.state == "no-driver":  # the cause says its own fix; a driver never installed needs these steps
        out.append(Check("gpu", False, f"{obs.error or NO_DRIVER}; Ollama runs on the CPU meanwhile",
                         distros.install_advice(distro()) if (obs.error or NO_DRIVER).startswith(distros.NO_DRIVER_HEAD)
                         else "journalctl -k -g nvidia shows what the kernel said"))
    elif obs.state == "mismatch":
        out.append(Check("gpu", False, f"NVIDIA driver {obs.driver_installed or '?'} is installed, the kernel "
                         f"still runs {obs.driver or '?'} (NVML: driver/library version mismatch); Ollama runs on "
                         f"the CPU until the two agree",
                         "reboot (announced in /run/reboot-required); or, with nothing using the GPU, "
                         "systemctl stop ollama; rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia; "
                         "systemctl start ollama"))
    else:
        out.append(Check("gpu", False, obs.error or obs.state,
                         "under WSL2: `wsl --shutdown` in Windows, then start WSL again" if obs.platform == "wsl2" else
                         "GPU lost: reboot; if it recurs check power, cooling and `journalctl -k | grep Xid`"))
    if not drv.loaded:
        if obs.state == "ok" and obs.platform != "wsl2":  # WSL2 has no NVIDIA driver state in /proc
            out.append(Check("gpu devices", None, f"cannot read the driver's state in {PROC}"))
    else:
        out += _node_checks(config, nodes, root, matrix)
    if obs.state == "ok" and config.ollama.models:
        out += _vram_checks(config, max(d.memory_total for d in obs.devices))
    return out + _next_kernels()


def _next_kernels() -> list[Check]:
    """A kernel installed beside the running one without the nvidia module (DKMS failed or did
    not run): rebooting into it would lose the GPU. Said before the reboot, not after."""
    missing = kernels_without_module()
    if not missing:
        return []
    k = missing[0]
    return [Check("next kernel", False, f"kernel {k} is installed without the nvidia module (DKMS did not build "
                  f"it): booting it leaves the GPU without its driver" + (f" (also {', '.join(missing[1:])})"
                                                                          if missing[1:] else ""),
                  f"sudo apt install linux-headers-{k} && sudo dkms autoinstall -k {k}; check with "
                  f"`dkms status` before you reboot")]


def _driver_for_ollama(config, obs) -> list[Check]:
    """The running driver against what the installed Ollama's CUDA build needs (driver_support)."""
    from localaid import driver_support
    from localaid.adapters import http
    if not config.ollama.enabled:
        return []
    probe, body = http.request(config.ollama.url + "/api/version", 2.0)
    version = body.get("version") if probe.ok and isinstance(body, dict) else None
    caps = [d.compute_capability for d in obs.devices]
    need = driver_support.needed_driver(version, caps)
    if need is None:
        return []
    old = driver_support.too_old(version, obs.driver, caps)
    return [Check("gpu driver for ollama", old is None,
                  old or f"driver {obs.driver} ≥ {need}, what Ollama {version} needs",
                  distros.upgrade_advice(distro(), need) if old else "")]


def _node_checks(config, nodes: list[Node], root: bool, matrix) -> list[Check]:
    mode = config.gpu.devices.mode
    out = []
    missing = [n.path for n in nodes if node_stat(n.path) is None]
    if missing:
        out.append(Check("gpu devices", False, "missing: " + ", ".join(missing),
                         FIX if mode != "off" else "nvidia-modprobe -u -c0 (gpu.devices.mode is off)"))
    else:
        out.append(Check("gpu devices", True, ", ".join(f"{os.path.basename(n.path)} {describe(node_stat(n.path))}"
                                                        for n in nodes if n.access)))
    if mode == "world":
        out.append(Check("gpu devices mode", None, "gpu.devices.mode is world: every local user may use "
                         "the GPU", "gpu.devices.mode: group (or ensure) limits it to the service users"))
    present = [n.path for n in nodes if n.access and node_stat(n.path) is not None]
    if not root:
        out.append(Check("device access per user", True, "run as root (sudo localaid doctor) to test", skipped=True))
    for user, results in (matrix(config, present) if root else {}).items():
        denied = {p: e for p, e in results.items() if e not in (0, errno.ENXIO)}
        nxio = [p for p, e in results.items() if e == errno.ENXIO]
        if denied:
            why = ", ".join(f"{os.path.basename(p)}: {os.strerror(e) if e < 98 else 'error'}" for p, e in denied.items())
            out.append(Check(f"gpu access {user}", False, f"{user} cannot open {why}", FIX))
        elif nxio:
            out.append(Check(f"gpu access {user}", None,
                             f"{user} may open the nodes, but no driver answers behind "
                             + ", ".join(os.path.basename(p) for p in nxio) + " (ENXIO)",
                             "the nodes' majors do not match the loaded driver: reload it or reboot"))
        else:
            out.append(Check(f"gpu access {user}", True, f"{user} opens all {len(results)} NVIDIA nodes read-write"))
    return out


def _vram_checks(config, gpu_total: int) -> list[Check]:
    """VRAM advice for each configured model, sizes from Ollama's list of installed models."""
    from localaid.adapters import http
    from localaid.adapters.ollama import installed_size, parse_installed
    from localaid.catalog import Inputs
    from localaid.vram import vram_note
    probe, body = http.request(config.ollama.url + "/api/tags", 3.0)
    if not probe.ok:
        return [Check("vram", None, f"no VRAM advice: cannot list Ollama's models ({probe.error})",
                      "start Ollama: systemctl start ollama")]
    installed = parse_installed(body)
    out = []
    for spec in config.ollama.models:
        size = installed_size(spec.name, installed)
        fits, text = vram_note(size, gpu_total, spec.name, Inputs.of(config))
        advice = "pick a smaller variant (fewer parameters or a lower quantisation)" if size else \
            f"localaid pull {spec.name} (localaid also pulls configured models itself)"
        out.append(Check(f"vram {spec.name}", True if fits else None, text, "" if fits else advice))
    return out
