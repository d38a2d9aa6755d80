"""Readers of /proc (and /sys) for the NVIDIA driver's state: pure parsing, no changes, no privileges.

The daemon, `localaid doctor` and the device job all ask the same questions (is the driver
loaded, which character majors does it use, which GPU minors exist, is there an NVIDIA card
at all), so they live here, apart from the privileged code that acts on the answers.
LOCALAID_PROC and LOCALAID_SYS move the roots (tests give them fake trees).
"""

from __future__ import annotations

import dataclasses
import glob
import ipaddress
import os
import re
import stat

from localaid import distro as distros
from localaid.records import HostFacts, RunnerObs

PROC = os.environ.get("LOCALAID_PROC", "/proc")
SYS = os.environ.get("LOCALAID_SYS", "/sys")
NVIDIA_VENDOR = 0x10DE
DISPLAY_CLASS = 0x03  # PCI base class "display controller": VGA (0x0300), 3D (0x0302), other (0x0380)


@dataclasses.dataclass(frozen=True)
class Driver:
    loaded: bool
    modules: frozenset[str]
    majors: dict
    gpu_minors: tuple[int, ...]
    params: dict  # DeviceFileUID/GID/Mode from /proc/driver/nvidia/params


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def char_majors(proc: str = PROC) -> dict[str, int]:
    """Character device majors by name from /proc/devices."""
    out, section = {}, None
    for line in _read(os.path.join(proc, "devices")).splitlines():
        if line.endswith(":"):
            section = line
            continue
        parts = line.split()
        if section == "Character devices:" and len(parts) == 2 and parts[0].isdigit():
            out[parts[1]] = int(parts[0])
    return out


def driver_state(proc: str = PROC) -> Driver:
    modules = frozenset(line.split()[0] for line in _read(os.path.join(proc, "modules")).splitlines() if line)
    majors = char_majors(proc)
    frontend = majors.get("nvidia-frontend", majors.get("nvidia"))
    minors = set()
    for info in glob.glob(os.path.join(proc, "driver/nvidia/gpus/*/information")):
        m = re.search(r"^Device Minor:\s*(\d+)", _read(info), re.M)
        if m:
            minors.add(int(m.group(1)))
    loaded = frontend is not None or "nvidia" in modules or "nvidia_current" in modules
    if loaded and not minors:
        minors.add(0)  # /proc/driver/nvidia not readable here: assume one GPU
    params = {}
    for line in _read(os.path.join(proc, "driver/nvidia/params")).splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("DeviceFileUID", "DeviceFileGID", "DeviceFileMode") and v.strip().isdigit():
            params[k.strip()] = int(v.strip())
    return Driver(loaded, modules, majors, tuple(sorted(minors)), params)


def _module_loaded(drv: Driver, part: str) -> bool:
    """nvidia_<part>, or Debian's renamed nvidia_current_<part>, in /proc/modules."""
    return any(m in (f"nvidia_{part}", f"nvidia_current_{part}") for m in drv.modules)


def uvm_loaded(drv: Driver) -> bool:
    return "nvidia-uvm" in drv.majors or _module_loaded(drv, "uvm")


def nvidia_gpus_on_pci(sys_root: str | None = None) -> tuple[str, ...]:
    """PCI addresses of NVIDIA display controllers (vendor 0x10de, class 0x03xxxx), from
    /sys/bus/pci/devices/*/{vendor,class}: the cards, whether or not a driver is bound."""
    out = []
    for dev in sorted(glob.glob(os.path.join(sys_root or SYS, "bus/pci/devices/*"))):
        try:
            vendor = int(_read(os.path.join(dev, "vendor")).strip(), 16)
            klass = int(_read(os.path.join(dev, "class")).strip(), 16)
        except ValueError:
            continue
        if vendor == NVIDIA_VENDOR and klass >> 16 == DISPLAY_CLASS:
            out.append(os.path.basename(dev))
    return tuple(out)


def nvidia_module_loaded(proc: str | None = None) -> bool:
    """The NVIDIA kernel module (nvidia, or Debian's nvidia_current) in /proc/modules."""
    names = {line.split()[0] for line in _read(os.path.join(proc or PROC, "modules")).splitlines() if line.strip()}
    return bool(names & {"nvidia", "nvidia_current"})


def gpu_without_driver(proc: str | None = None, sys_root: str | None = None) -> str | None:
    """The words for an NVIDIA card whose driver is not loaded (None when there is no such card,
    or the driver is loaded): what `localaid status` and `localaid doctor` say about it, the
    cause first (module_trouble), then "(PCI <address>: <detail>)"."""
    cards = nvidia_gpus_on_pci(sys_root)
    if not cards or nvidia_module_loaded(proc):
        return None
    headline, detail = module_trouble(cards, proc, sys_root)
    return f"{headline} (PCI {', '.join(cards)}: {detail})"


# Where kernel modules and DKMS's builds live, and the kernel that runs (tests move them).
MODULES = os.environ.get("LOCALAID_MODULES", "/lib/modules")
DKMS = os.environ.get("LOCALAID_DKMS", "/var/lib/dkms")
KERNEL = os.environ.get("LOCALAID_KERNEL_RELEASE") or os.uname().release
SECURE_BOOT_VAR = "firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
OTHER_DRIVERS = ("nouveau", "nova_core")  # the kernel's own drivers for NVIDIA cards


def _module_files(kernel: str | None) -> list[str]:
    """nvidia.ko (any compression, Debian's nvidia-current.ko too) below /lib/modules/<kernel>,
    or below any kernel's tree when `kernel` is None."""
    top = os.path.join(MODULES, kernel or "*")
    return [p for p in glob.glob(os.path.join(top, "**", "nvidia*.ko*"), recursive=True)
            if re.fullmatch(r"nvidia(-current)?\.ko(\.\w+)?", os.path.basename(p))]


def kernels_without_module() -> list[str]:
    """Installed kernels (a tree in /lib/modules with its modules.dep) that have no nvidia module
    while the running one has: a kernel update DKMS did not follow. Booting one of them leaves
    the GPU without its driver. Newest first."""
    built = _module_files(None)
    if not any(p.startswith(os.path.join(MODULES, KERNEL) + os.sep) for p in built):
        return []  # no module to lose (or not our case: module_trouble says why)
    have = {os.path.relpath(p, MODULES).split(os.sep)[0] for p in built}
    kernels = [os.path.basename(os.path.dirname(d)) for d in glob.glob(os.path.join(MODULES, "*", "modules.dep"))]
    return sorted((k for k in kernels if k not in have), key=_release_key, reverse=True)


def _release_key(release: str) -> list:
    """"6.1.0-31-amd64" sorts after "6.1.0-9-amd64": numbers as numbers."""
    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.split(r"(\d+)", release) if x]


def secure_boot_on(sys_root: str | None = None) -> bool:
    """The SecureBoot EFI variable: 4 bytes of attributes, then 1 when enforced."""
    try:
        with open(os.path.join(sys_root or SYS, SECURE_BOOT_VAR), "rb") as f:
            data = f.read(5)
    except OSError:
        return False
    return len(data) == 5 and data[4] == 1


def bound_driver(card: str, sys_root: str | None = None) -> str | None:
    """The driver the kernel bound to the PCI device `card` (the name its driver link points to)."""
    try:
        return os.path.basename(os.readlink(os.path.join(sys_root or SYS, "bus/pci/devices", card, "driver")))
    except OSError:
        return None


def module_trouble(cards, proc: str | None = None, sys_root: str | None = None) -> tuple[str, str]:
    """Why an NVIDIA card has no working nvidia module, told apart: (STATUS headline, detail)."""
    built = _module_files(None)  # one walk of /lib/modules; the running kernel's tree is among them
    if not built and not glob.glob(os.path.join(DKMS, "nvidia*")):
        return distros.no_driver_status(distro()), "no nvidia kernel module loaded"
    if not any(p.startswith(os.path.join(MODULES, KERNEL) + os.sep) for p in built):
        return (f"NVIDIA driver not built for kernel {KERNEL}: install linux-headers-{KERNEL}, "
                f"run dkms autoinstall, reboot"), "no nvidia module for the running kernel (DKMS)"
    other = next((d for d in (bound_driver(c, sys_root) for c in cards) if d in OTHER_DRIVERS), None)
    loaded = {line.split()[0] for line in _read(os.path.join(proc or PROC, "modules")).splitlines() if line.strip()}
    other = other or next((d for d in OTHER_DRIVERS if d in loaded), None)
    if other:
        return (f"NVIDIA GPU held by {other}: blacklist it (the nvidia-driver package does), "
                f"update-initramfs -u, reboot"), f"bound to {other}, not nvidia"
    if secure_boot_on(sys_root):
        return ("NVIDIA module refused by Secure Boot: enroll DKMS's key (mokutil --import "
                "/var/lib/dkms/mok.pub) and reboot"), "Secure Boot is on and the nvidia module is not loaded"
    return "NVIDIA module not loaded: modprobe nvidia (journalctl -k says why it fails)", \
        "the module is built but not loaded"


# ---------------------------------------------------------------- platform: Linux or WSL2
# Under WSL2 the GPU is reached through /dev/dxg (a misc character device of the WSL kernel's
# dxgkrnl driver) and the libraries WSL mounts at /usr/lib/wsl/lib: no nvidia module, no
# /dev/nvidia*, no /proc/driver/nvidia. The signals: the kernel release ("...-microsoft-standard-
# WSL2", what systemd-detect-virt's "wsl" is read from, LOCALAID_KERNEL_RELEASE in tests) or
# /dev/dxg as a character device (a self-built WSL kernel may carry another release string).
# LOCALAID_DXG moves the node (unit tests).
WSL2 = "wsl2"
LINUX = "linux"
DXG = os.environ.get("LOCALAID_DXG", "/dev/dxg")
WSL_LIB_DIR = "/usr/lib/wsl/lib"
_WSL2_RELEASE = re.compile(r"microsoft.*wsl2", re.I)


def wsl2_release(release: str) -> bool:
    """A WSL2 kernel by its release (`*microsoft*WSL2*`, any case, as systemd and Ollama's
    install.sh match it). WSL1's ("4.4.0-19041-Microsoft") is not one."""
    return bool(_WSL2_RELEASE.search(release or ""))


def platform_of(release: str, dxg_is_char: bool) -> str:
    """WSL2 or LINUX from the two signals (pure)."""
    return WSL2 if wsl2_release(release) or dxg_is_char else LINUX


def _is_char(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def platform(release: str | None = None, dxg: str | None = None) -> str:
    """The platform this process runs on: WSL2 or LINUX."""
    return platform_of(KERNEL if release is None else release, _is_char(dxg or DXG))


def on_wsl2() -> bool:
    return platform() == WSL2


# ---------------------------------------------------------------- driver versions: running, installed
# Where Debian, Ubuntu and NVIDIA's own installer put libnvidia-ml.so.<version> (the file the
# .so.1 link names): the version a process that starts now gets. LOCALAID_NVML_LIB_DIRS (":"-
# separated) replaces the list (tests).
NVML_LIB_DIRS = tuple(os.environ.get("LOCALAID_NVML_LIB_DIRS", "").split(":")) if \
    os.environ.get("LOCALAID_NVML_LIB_DIRS") else (
    "/usr/lib/x86_64-linux-gnu/nvidia/current", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", WSL_LIB_DIR)
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")


def running_driver_version(proc: str | None = None) -> str | None:
    """The loaded kernel module's version, from /proc/driver/nvidia/version ("NVRM version:
    NVIDIA UNIX x86_64 Kernel Module  535.216.01  ..."); None when no driver is loaded."""
    m = re.search(r"^NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", _read(os.path.join(proc or PROC,
                  "driver/nvidia/version")) + " ", re.M)
    return m.group(1) if m else None


def nvml_library(dirs: tuple[str, ...] | None = None) -> str | None:
    """The file the first libnvidia-ml.so.1 found names (links resolved), None when there is none."""
    for d in dirs or NVML_LIB_DIRS:
        link = os.path.join(d, "libnvidia-ml.so.1")
        if os.path.exists(link):
            return os.path.realpath(link)
    return None


def installed_library_version(dirs: tuple[str, ...] | None = None) -> str | None:
    """The version of the NVML library on disk: nvml_library()'s file is named
    libnvidia-ml.so.<version> by every packaging. None when there is none or its name carries no
    version."""
    lib = nvml_library(dirs)
    if lib is None:
        return None
    name = os.path.basename(lib)
    version = name.removeprefix("libnvidia-ml.so.")
    return version if name != version and _VERSION.fullmatch(version) else None


def driver_versions_differ(running: str | None, installed: str | None) -> bool:
    """Both known and not the same release (550.127 and 550.127.05 are the same)."""
    if not running or not installed:
        return False
    a, b = running.split("."), installed.split(".")
    n = min(len(a), len(b))
    return a[:n] != b[:n]


def mismatch_text(running: str | None, installed: str | None) -> str:
    """STATUS's words for a driver updated under the running module."""
    return (f"NVIDIA driver updated ({installed or 'a new version'} installed, {running or 'another'} "
            f"running): reboot to use the GPU")


# ------------------------------------------------------------------------- the distribution
# os-release(5): /etc/os-release, else /usr/lib/os-release. LOCALAID_OS_RELEASE names another
# file (tests give Ubuntu's and Debian's texts).
OS_RELEASE = os.environ.get("LOCALAID_OS_RELEASE")


def distro() -> distros.Distro:
    """This system's distribution (family "other" when os-release cannot be read)."""
    for path in (OS_RELEASE,) if OS_RELEASE else ("/etc/os-release", "/usr/lib/os-release"):
        text = _read(path)
        if text:
            return distros.parse(text)
    return distros.Distro()


# -------------------------------------------------------------- cgroups and processes
CGROUP_ROOT = os.environ.get("LOCALAID_CGROUP", "/sys/fs/cgroup")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cgroup_cpu_seconds(control_group: str, root: str = CGROUP_ROOT) -> float | None:
    """CPU time used so far by every process of a unit's cgroup (systemd's ControlGroup, e.g.
    "/system.slice/open-webui.service"), or None when it cannot be read. cgroup v2's cpu.stat
    (also under unified/ on a hybrid host), else cgroup v1's cpuacct.usage."""
    if not control_group.startswith("/") or ".." in control_group.split("/"):
        return None
    for base in (root, os.path.join(root, "unified")):
        for line in _read(f"{base}{control_group}/cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
    for v1 in ("cpuacct", "cpu,cpuacct"):
        ns = _read(f"{root}/{v1}{control_group}/cpuacct.usage").strip()
        if ns.isdigit():
            return int(ns) / 1e9
    return None


CGROUP_BASES = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")


def cgroup_pids(control_group: str, bases: tuple[str, ...] = CGROUP_BASES) -> tuple[int, ...]:
    """PIDs in a unit's cgroup (cgroup v2, or the name=systemd hierarchy of v1), subgroups included."""
    if not control_group:
        return ()
    for base in bases:
        top = f"{base}{control_group}"
        if not os.path.isfile(os.path.join(top, "cgroup.procs")):
            continue
        pids: list[int] = []
        for directory, _dirs, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(directory, "cgroup.procs")) as f:
                        pids += [int(x) for x in f.read().split()]
                except (OSError, ValueError):
                    continue
        return tuple(pids)
    return ()


def process_cpu_seconds(pid: int, proc: str = "/proc") -> float | None:
    """CPU time a process has used (user + system, all its threads) from /proc/PID/stat, which
    anyone may read; None when it is gone."""
    data = _read(f"{proc}/{pid}/stat")
    try:
        fields = data[data.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (ValueError, IndexError):
        return None


def process_name(pid: int, proc: str = "/proc") -> str:
    return _read(f"{proc}/{pid}/comm").strip()


def runners(control_group: str, server_pid: int) -> RunnerObs | None:
    """Ollama's runners (the processes of its cgroup but the server) and their CPU time: a few
    small /proc reads, made only while a model is loaded (the wedged-runner watchdog)."""
    if not control_group:
        return None
    pids, names, cpu = [], [], 0.0
    for pid in sorted(cgroup_pids(control_group)):
        seconds = None if pid == server_pid else process_cpu_seconds(pid)
        if seconds is not None:  # not the server, nor a runner gone since the list was read
            pids.append(pid)
            names.append(process_name(pid))
            cpu += seconds
    return RunnerObs(tuple(pids), cpu, tuple(names))


def host_facts(meminfo: str = "/proc/meminfo") -> HostFacts:
    """RAM (MemTotal) and the CPUs this process may run on: what a model for the CPU is sized by.
    Always the real /proc: these are not the driver's state that tests fake."""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read(meminfo), re.M)
    try:
        cores = len(os.sched_getaffinity(0))
    except OSError:
        cores = os.cpu_count() or 1
    return HostFacts(int(m.group(1)) * 1024 if m else 0, cores)


def local_addresses(proc: str = PROC) -> tuple[str, ...]:
    """This host's own IPv4 and global IPv6 addresses, loopback and link-local left out (the
    names a server certificate for a wildcard listen is for), in a stable order."""
    v4: list[str] = []
    last = ""
    for line in _read(os.path.join(proc, "net/fib_trie")).splitlines():
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif text.startswith("/32 host LOCAL") and last and not last.startswith("127.") and last not in v4:
            v4.append(last)
    v6: list[str] = []
    for line in _read(os.path.join(proc, "net/if_inet6")).splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "00":  # scope global
            addr = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            if addr not in v6:
                v6.append(addr)
    return tuple(v4 + v6)
