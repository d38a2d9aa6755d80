"""The sandboxes meet the devices: can ollama.service and localaid.service, hardened as shipped,
open the NVIDIA device nodes? Booted Debian 12, localaid .deb installed, a fake driver.

What cannot exist here is faked at its real interface, as in test_gpu.py:
- the kernel's view of the driver: a /proc tree at /run/fake-proc (modules, devices, params),
  given to localaid's device job as LOCALAID_PROC; its devices list is also bind-mounted over
  /proc/devices for the container's PID 1, which resolves DeviceAllow=char-<group> there at
  each unit start (as it reads the real list on a GPU machine);
- the nodes: real character devices made with mknod, majors as the driver announces them
  (195, nvidia-uvm and nvidia-caps dynamic ones). No driver is behind them: an open that the
  sandbox lets through ends in the kernel's device lookup, ENXIO. The device cgroup/BPF policy
  answers EPERM, file permissions EACCES (checked first: a node the user cannot open by its mode
  says nothing about the device policy);
- the driver's ways of naming major 195 in /proc/devices (FLAVOURS): the container boots with
  the older "nvidia-frontend"; a case of the current driver's names ("nvidia", "nvidia-modeset",
  "nvidiactl", and an "nvidia-caps" major) rewrites the bind-mounted file in place for its
  probe and puts the boot one back after: systemd reads it at each unit start;
- Ollama: the fake download site (tests/fakes/ollama/server.py) so that localaid's real set-up
  job installs it and writes the real drop-in, ollama.service.d/50-localaid.conf.

The probe: a transient unit (systemd-run) with the [Service] settings of the real unit, as
`systemctl cat` shows them (the unit plus localaid's drop-in), less what does not sandbox
(ExecStart, Restart, Environment, ...), runs a small program that opens each node read-write
(READ_ONLY ones, whose mode allows nothing more, read-only).

Device policy must be enforceable for any of this to mean something. In the harness's usual
container it is not (checked 2026-12): on these hosts' hybrid cgroup v1 hierarchy the container
gets the v1 devices controller read-only, so its systemd cannot use it, and nspawn's syscall
filter denies bpf(), which systemd needs for device policy on cgroup v2 — DevicePolicy=strict
then opens anything, silently. So this module boots its container with the unified hierarchy
(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1, what Debian 12 and 13 run on bare metal) and bpf() allowed
(--system-call-filter=bpf), in a cgroup of its own (so that its systemd shares no cgroup with
other containers), and a control run proves enforcement first: DevicePolicy=strict must refuse
/dev/null. Where it does not, every test fails and says what the host lacks.
Host tools needed: openssl, zstd (the fake download site).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import boot
from harness import free_port

TESTS = Path(__file__).resolve().parents[1]
FAKES = TESTS / "fakes"
sys.path.insert(0, str(FAKES / "ollama"))

import server as fake_site  # noqa: E402

UVM_MAJOR = 511  # the dynamic major test_gpu.py's fake driver (and fake-kmod) gives nvidia-uvm
CAPS_MAJOR = 510  # nvidia-caps: a dynamic major of its own (nv-caps.c, alloc_chrdev_region)
# /dev/nvidia-modeset is minor 254 of major 195 (NV_MINOR_DEVICE_NUMBER_MODESET_DEVICE), made
# by nvidia-modprobe -m when nvidia_modeset is loaded (the module list below says it is).
NODES = {"/dev/nvidiactl": (195, 255), "/dev/nvidia0": (195, 0),
         "/dev/nvidia-uvm": (UVM_MAJOR, 0), "/dev/nvidia-uvm-tools": (UVM_MAJOR, 1),
         "/dev/nvidia-modeset": (195, 254)}
# The MIG capabilities, as nvidia-modprobe -f makes them from /proc/driver/nvidia/capabilities
# (root:root, the DeviceFileMode given there): nvidia-cap1 "config" 0400, nvidia-cap2 "monitor"
# 0444. Their mode is the driver's, whatever NVreg_DeviceFileMode says.
CAP_NODES = {"/dev/nvidia-caps/nvidia-cap1": (CAPS_MAJOR, 1, 0o400, "mig/config"),
             "/dev/nvidia-caps/nvidia-cap2": (CAPS_MAJOR, 2, 0o444, "mig/monitor")}
CAP_PATHS = tuple(CAP_NODES)
# Only nvidia-cap2 is probed, read-only (its mode lets anyone read it, nobody write it); ollama can
# never open nvidia-cap1 (root's, 0400): EACCES, before any device policy is asked.
READ_ONLY = ("/dev/nvidia-caps/nvidia-cap2",)
PROBED = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
NODES_195 = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-modeset")

# /proc/devices' driver lines, in the kernel's order (by major, then by first minor):
# - "frontend": older drivers take all of major 195 with one register_chrdev() as
#   "nvidia-frontend" and dispatch its minors themselves, nvidia-modeset's 254 included: one
#   line. (Older still, one register_chrdev() as plain "nvidia".)
# - "current": the kernel modules of today's drivers (nv.c) register regions of 195 with the
#   cdev API: minors 0-247 as "nvidia", 255 as "nvidiactl"; nvidia-modeset.ko registers 195:254
#   as "nvidia-modeset" (register_chrdev_region in nvidia-modeset-linux.c), nv-caps.c a dynamic
#   major as "nvidia-caps". Major 195 has three names at once there, and systemd's
#   DeviceAllow=char-NAME allows the whole major of each line whose name matches NAME (fnmatch),
#   whatever the minor: any one of char-nvidia, char-nvidiactl, char-nvidia-modeset opens all of
#   195. A group that no line names allows nothing (and is no error).
# - "current-no-modeset": the same without nvidia_modeset loaded (a headless compute box; it is
#   loaded for nvidia-drm): 195 is "nvidia" and "nvidiactl" only.
FLAVOURS = {
    "frontend": ("195 nvidia-frontend", f"{UVM_MAJOR} nvidia-uvm"),
    "current": ("195 nvidia", "195 nvidia-modeset", "195 nvidiactl", f"{CAPS_MAJOR} nvidia-caps",
                f"{UVM_MAJOR} nvidia-uvm"),
    "current-no-modeset": ("195 nvidia", "195 nvidiactl", f"{CAPS_MAJOR} nvidia-caps", f"{UVM_MAJOR} nvidia-uvm"),
}
BOOT_FLAVOUR = "frontend"
# What a case probes, by flavour: the MIG capability with the current driver's names only.
PROBED_IN = {"frontend": PROBED, "current": PROBED + READ_ONLY, "current-no-modeset": PROBED + READ_ONLY}
PORT = free_port()
DROPIN = "/etc/systemd/system/ollama.service.d/50-localaid.conf"

CONFIG = """\
ollama:
  install_script: {url}
  port: {port}
  version: "0.9.0"
  install_timeout: 60s
webui:
  enabled: false
"""

FAKE_PROC_DROPIN = "[Service]\nEnvironment=LOCALAID_PROC=/run/fake-proc\n"

# Opens each path read-write (PATH:r read-only), prints "PATH ok" or "PATH ERRNONAME".
OPEN_PROGRAM = """\
import errno, os, sys
for arg in sys.argv[1:]:
    path, _, how = arg.partition(":")
    try:
        os.close(os.open(path, os.O_RDONLY if how == "r" else os.O_RDWR))
        print(path, "ok")
    except OSError as e:
        print(path, errno.errorcode.get(e.errno, e.errno))
"""

# For the diagnosis only: may this process load a cgroup device BPF program (what systemd does
# for DevicePolicy= on cgroup v2)? bpf(BPF_PROG_LOAD) of "r0 = 0; exit".
BPF_PROGRAM = """\
import ctypes, errno, struct
libc = ctypes.CDLL(None, use_errno=True)
insns = ctypes.create_string_buffer(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0), 16)
lic = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(struct.pack("<IIQQ", 15, 2, ctypes.addressof(insns),
                                               ctypes.addressof(lic)).ljust(128, b"\\0"), 128)
fd = libc.syscall(321, 5, attr, 128)
print("allowed" if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
"""

# [Service] settings that start, stop or feed the service rather than confine it.
NOT_SANDBOX = {
    "ExecStart", "ExecStartPre", "ExecStartPost", "ExecCondition", "ExecReload", "ExecStop",
    "ExecStopPost", "Type", "NotifyAccess", "WatchdogSec", "Restart", "RestartSec",
    "RestartPreventExitStatus", "RestartForceExitStatus", "SuccessExitStatus", "TimeoutSec",
    "TimeoutStartSec", "TimeoutStopSec", "KillMode", "KillSignal", "RemainAfterExit", "PIDFile",
    "BusName", "Environment", "EnvironmentFile", "PassEnvironment", "UnsetEnvironment",
    # the service's own directories: a probe must not make or own them
    "RuntimeDirectory", "RuntimeDirectoryMode", "RuntimeDirectoryPreserve", "StateDirectory",
    "StateDirectoryMode", "CacheDirectory", "CacheDirectoryMode", "LogsDirectory",
    "LogsDirectoryMode", "ConfigurationDirectory", "ConfigurationDirectoryMode",
}
REACHED = ("ENXIO", "ENODEV")  # the sandbox let the open through to the (absent) driver


# ------------------------------------------------------------------------------ host side
def _cgroup_mounts() -> list[tuple[str, str]]:
    """(mount point, this process's path there) for the hierarchies nspawn places a container
    by: cgroup2, and the named v1 "systemd" hierarchy of a hybrid host."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        own["v2" if hid == "0" else controllers] = path
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts = line.split()[:4]
        if fstype == "cgroup2" and "v2" in own:
            out.append((mnt, own["v2"]))
        elif fstype == "cgroup" and "name=systemd" in opts.split(",") and "name=systemd" in own:
            out.append((mnt, own["name=systemd"]))
    return out


@contextlib.contextmanager
def own_cgroup(tag: str):
    """Run the body (which starts nspawn) in a fresh cgroup, then move this process back.

    Without systemd on the host, nspawn --keep-unit puts its container's cgroups ("payload")
    under its own: the root, for every container of every test run. Yields the cgroups made, for
    remove_cgroups() once the container is gone."""
    made, moved = [], []
    try:
        for mnt, path in _cgroup_mounts():
            new = Path(mnt + path.rstrip("/")) / tag
            new.mkdir()
            made.append(new)
            (new / "cgroup.procs").write_text(str(os.getpid()))
            moved.append(Path(mnt + path))
        yield made
    finally:
        for old in moved:
            (old / "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroups(dirs) -> None:
    for top in dirs:
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def host_cgroup_fs() -> str:
    r = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], check=False, capture_output=True, text=True)
    return r.stdout.strip()


# ------------------------------------------------------------------------------ guest side
def proc_devices(real: str, flavour: str) -> str:
    """The kernel's /proc/devices with the driver's character groups (FLAVOURS) added, in major
    order (a stable sort: the lines of one major keep the order given)."""
    head, _, rest = real.partition("Character devices:\n")
    chars, _, blocks = rest.partition("\n\n")
    taken = {int(ln.split()[0]) for ln in chars.splitlines()} & {195, UVM_MAJOR, CAPS_MAJOR}
    if taken:  # a real driver would answer behind the fake nodes
        pytest.fail(f"this kernel already uses character major(s) {sorted(taken)}:\n{real}")
    lines = chars.splitlines() + list(FLAVOURS[flavour])
    lines.sort(key=lambda ln: int(ln.split()[0]))
    return head + "Character devices:\n" + "\n".join(f"{ln.split(None, 1)[0]:>3} {ln.split(None, 1)[1]}"
                                                  for ln in lines) + "\n\n" + blocks


def load_driver(c, mode: int) -> None:
    """What the loaded driver (nvidia, nvidia_uvm, nvidia_modeset; one GPU) leaves: its /proc entries and its
    nodes, root:root with the mode of NVreg_DeviceFileMode (the MIG capabilities with their own).
    The /proc/devices text of each flavour goes to c.proc_devices."""
    c.write("/run/fake-proc/modules", "nvidia 56320000 2 nvidia_uvm,nvidia_modeset, Live 0x0\n"
            "nvidia_uvm 1540096 0 - Live 0x0\nnvidia_modeset 1335296 0 - Live 0x0\n")
    real = c.read("/proc/devices")
    c.proc_devices = {name: proc_devices(real, name) for name in FLAVOURS}
    c.write("/run/fake-proc/devices", c.proc_devices[BOOT_FLAVOUR])
    c.write("/run/fake-proc/driver/nvidia/gpus/0000:01:00.0/information",
            "Model: \t\t NVIDIA GeForce RTX 4070\nDevice Minor: \t 0\n")
    c.write("/run/fake-proc/driver/nvidia/params", f"DeviceFileUID: 0\nDeviceFileGID: 0\nDeviceFileMode: {mode}\n")
    c.run(["mount", "--bind", "/run/fake-proc/devices", "/proc/devices"])  # PID 1's mount namespace
    for path, (major, minor) in NODES.items():
        c.sh(f"rm -f {path}; mknod -m {mode:o} {path} c {major} {minor}")
    for path, (major, minor, cap_mode, proc_file) in CAP_NODES.items():
        c.write(f"/run/fake-proc/driver/nvidia/capabilities/{proc_file}",
                f"DeviceFileMinor: {minor}\nDeviceFileMode: {cap_mode}\nDeviceFileModify: 1\n")
        c.sh(f"mkdir -p /dev/nvidia-caps; rm -f {path}; mknod -m {cap_mode:o} {path} c {major} {minor}")
    c.sh("for t in modprobe rmmod nvidia-modprobe; do ln -sf /opt/fakes/bin/fake-kmod /usr/local/sbin/$t; done; "
         "mkdir -p /run/fake-kmod")
    for unit in ("localaid-devices.service", "localaid-gpu-recover.service"):
        c.write(f"/etc/systemd/system/{unit}.d/50-test.conf", FAKE_PROC_DROPIN)


@contextlib.contextmanager
def driver_flavour(c, flavour: str):
    """/proc/devices of `flavour` for PID 1 (the bind-mounted file rewritten in place, so the
    mount shows it) for the body; the boot flavour again after it."""
    if flavour == BOOT_FLAVOUR:
        yield
        return
    try:
        c.write("/run/fake-proc/devices", c.proc_devices[flavour])
        assert c.read("/proc/devices") == c.proc_devices[flavour], c.read("/proc/devices")
        yield
    finally:
        c.write("/run/fake-proc/devices", c.proc_devices[BOOT_FLAVOUR])
    assert c.read("/proc/devices") == c.proc_devices[BOOT_FLAVOUR], c.read("/proc/devices")


def service_settings(c, unit: str) -> list[tuple[str, str]]:
    """The [Service] assignments of `unit` as systemd loaded it (unit file, then drop-ins), in
    order, less NOT_SANDBOX."""
    text = c.systemctl("cat", unit).stdout
    out, section = [], None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, sep, value = line.partition("=")
        if section == "[Service]" and sep and key.strip() not in NOT_SANDBOX:
            out.append((key.strip(), value.strip()))
    return out


def without(settings, device_allow_targets) -> list[tuple[str, str]]:
    """`settings` less the DeviceAllow= lines whose device (first word) is in the list."""
    return [(k, v) for k, v in settings
            if not (k == "DeviceAllow" and v.split()[:1] and v.split()[0] in device_allow_targets)]


def probe(c, settings, paths=PROBED) -> dict[str, str]:
    """Open `paths` read-write in a transient unit sandboxed by `settings`: {path: ok|ERRNO}."""
    argv = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
            *(f"--property={k}={v}" for k, v in settings),
            "--", "/usr/bin/python3", "-c", OPEN_PROGRAM, *(p + ":r" if p in READ_ONLY else p for p in paths)]
    r = c.run(argv, check=False, timeout=60)
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith("/"))
    assert r.returncode == 0 and set(got) == set(paths), \
        f"probe failed ({r.returncode}): {shlex.join(argv)}\n{r.stdout}\n{r.stderr}"
    return got


def shown(c, unit: str, keys) -> list[str]:
    return c.run(["systemctl", "show", "-p", ",".join(sorted(set(keys))), unit]).stdout.splitlines()


def evidence(c) -> str:
    """What decides whether device policy can be enforced in this container."""
    mounts = c.run(["findmnt", "-rno", "TARGET,FSTYPE,OPTIONS", "-R", "/sys/fs/cgroup"], check=False).stdout
    bpf = c.run(["systemd-run", "--wait", "--pipe", "--quiet", "--collect", "--", "/usr/bin/python3", "-c",
                 BPF_PROGRAM], check=False).stdout.strip()
    return (f"host /sys/fs/cgroup: {host_cgroup_fs()}; container /sys/fs/cgroup: "
            f"{c.run(['stat', '-fc', '%T', '/sys/fs/cgroup']).stdout.strip()}\n"
            f"container cgroup mounts:\n{mounts}"
            f"bpf(BPF_PROG_LOAD, cgroup device program) from a unit of the container's systemd: {bpf}\n"
            f"container PID 1 {' '.join(c.run(['grep', 'Seccomp:', '/proc/1/status']).stdout.split())}")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = fake_site.FakeOllamaSite(tmp_path_factory.mktemp("ollama-site")).start()
    yield s
    s.stop()


DRIVER_MODES = [
    # the driver's default: the nodes are open to everyone, the device job leaves them so
    pytest.param(0o666, id="nodes-0666"),
    # a restrictive NVreg_DeviceFileMode: root-only nodes; the device job (gpu.devices.mode
    # ensure, the default) gives the service users access through a group: Ollama's sandbox
    # must keep that group working (User=ollama with PrivateUsers=yes)
    pytest.param(0o600, id="nodes-0600"),
]


@pytest.fixture(scope="module", params=DRIVER_MODES)
def container(request, rootfs, deb, site):
    """Debian 12 on the unified cgroup hierarchy with bpf() allowed, driver "loaded", localaid
    installed and its real jobs run: Ollama set up (drop-in written), device nodes fixed."""
    mode = request.param

    def setup(c):
        c.write("/usr/local/share/ca-certificates/localaid-test-ca.crt", site.ca_pem)
        c.run(["update-ca-certificates"])
        load_driver(c, mode)
        c.systemctl("daemon-reload")

    tag = f"localaid-it-sandbox-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp, own_cgroup(tag) as cgroups:
        mp.setenv("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        try:
            c = boot(rootfs, deb, install=True, config=CONFIG.format(url=site.script_url, port=PORT),
                     setup=setup, name=f"gpu-sandbox-{mode:o}", nspawn_args=["--system-call-filter=bpf"],
                     binds=[(str(FAKES / "bin"), "/opt/fakes/bin", True)])
        except BaseException:
            remove_cgroups(cgroups)
            raise
    try:
        t0 = time.monotonic()
        # The daemon starts both jobs on its first cycle; starting them here joins (or repeats) them.
        r = c.systemctl("start", "localaid-ollama-setup.service", check=False, timeout=300)
        assert r.returncode == 0 and c.exists(DROPIN), c.journal("localaid-ollama-setup.service")
        assert c.read(DROPIN).startswith("# Written by localaid"), c.read(DROPIN)
        r = c.systemctl("start", "localaid-devices.service", check=False, timeout=120)
        assert r.returncode == 0, c.journal("localaid-devices.service")
        c.nodes = c.run(["stat", "-c", "%n %A %U:%G %t:%T", *NODES, *CAP_NODES]).stdout
        if mode == 0o600:  # access through the nodes' group, which ollama is in, and not world
            groups = c.run(["id", "-nG", "ollama"]).stdout.split()
            for line in c.nodes.splitlines()[:2]:
                _, perms, owner, _ = line.split()
                assert perms.endswith("rw----") and owner.split(":")[1] in groups, (c.nodes, groups)
        print(f"\nset-up jobs {time.monotonic() - t0:.1f} s; nodes as the device job left them:\n{c.nodes}"
              f"{DROPIN}:\n{c.read(DROPIN)}", file=sys.stderr)
        yield c
    finally:
        c.stop()
        remove_cgroups(cgroups)


@pytest.fixture(scope="module")
def enforced(container):
    """The control run: DevicePolicy=strict with nothing allowed must refuse even /dev/null, and
    a path line must allow that node's major:minor and no other. Fails (loudly) when not."""
    c = container
    strict = probe(c, [("DevicePolicy", "strict")], ("/dev/null",))
    one = probe(c, [("DevicePolicy", "closed"), ("DeviceAllow", "/dev/nvidia0 rw")], ("/dev/null", *PROBED))
    print(f"\ncontrol: strict, nothing allowed: {strict}; closed + /dev/nvidia0: {one}", file=sys.stderr)
    if strict["/dev/null"] != "EPERM":
        pytest.fail("device policy is NOT enforced in this container: DevicePolicy=strict with no DeviceAllow= "
                    f"opened /dev/null ({strict['/dev/null']}); the host lacks what systemd needs for it (the "
                    "cgroup v1 devices controller writable in the container, or cgroup v2 with bpf() allowed):\n"
                    + evidence(c))
    assert one == {"/dev/null": "ok", **dict.fromkeys(PROBED, "EPERM"), "/dev/nvidia0": "ENXIO"}, one
    return evidence(c)


# ------------------------------------------------------------------------------ tests
def test_device_policy_is_enforced_here(enforced, capsys):
    with capsys.disabled():
        print(f"\n{enforced}")
    assert "container /sys/fs/cgroup: cgroup2fs" in enforced


def test_probe_runs_with_the_units_own_sandbox(container, enforced):
    """The transient units get what the real ones have: every setting passed reads back the same
    in `systemctl show` (unit-file lines, drop-in lines, empty resets, repeated lines)."""
    c = container
    for unit in ("ollama.service", "localaid.service"):
        settings = service_settings(c, unit)
        keys = {k for k, _ in settings}
        assert {"DevicePolicy", "DeviceAllow", "SystemCallFilter", "CapabilityBoundingSet"} <= keys, settings
        name = f"sandbox-copy-{unit.split('.')[0]}"
        c.run(["systemd-run", "--quiet", f"--unit={name}", "--property=RemainAfterExit=yes",
               *(f"--property={k}={v}" for k, v in settings), "--", "/bin/true"])
        try:
            assert shown(c, name, keys) == shown(c, unit, keys)
        finally:
            c.systemctl("stop", name, check=False)


UVM_PATHS = ("/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
GROUPS_195 = ("char-nvidia-frontend", "char-nvidia", "char-nvidiactl", "char-nvidia-modeset")


def alone(group: str) -> tuple[str, ...]:
    """Every DeviceAllow= line that opens major 195 but `group`: the nodes' path lines, the
    other groups."""
    return NODES_195 + tuple(g for g in GROUPS_195 if g != group)


OLLAMA_CASES = [  # (flavour of /proc/devices, DeviceAllow= lines removed, {node: errno expected})
    pytest.param("frontend", (), {}, id="as-shipped"),
    # each node is allowed twice: by its device group and by path; either line alone suffices
    pytest.param("frontend", UVM_PATHS, {}, id="minus-path-lines-nvidia-uvm"),
    pytest.param("frontend", ("char-nvidia-uvm",), {}, id="minus-char-nvidia-uvm"),
    pytest.param("frontend", UVM_PATHS + ("char-nvidia-uvm",), dict.fromkeys(UVM_PATHS, "EPERM"),
                 id="minus-both-nvidia-uvm"),
    # major 195 is nvidia-frontend's (nvidiactl 255, GPUs 0-254): without the group and the
    # nvidiactl path line only /dev/nvidia0's own path line is left
    pytest.param("frontend", ("/dev/nvidiactl", "char-nvidia-frontend", "char-nvidiactl"), {"/dev/nvidiactl": "EPERM"},
                 id="minus-nvidiactl-and-frontend"),
    # ... and that group alone opens all of 195 (nvidia-modeset's 254 too)
    pytest.param("frontend", alone("char-nvidia-frontend"), {}, id="char-nvidia-frontend-alone"),
    # The current driver's names: each group that names 195 there, the only 195 line left (no
    # path lines: the nodes made after the drop-in was written), opens all of it, and without
    # any of them nothing of 195 is open. char-nvidia: the GPUs' region, what the drop-in's
    # comment means by 'plain "nvidia"'. char-nvidia-modeset: faithfully a name of major 195
    # (no driver gives /dev/nvidia-modeset a major of its own, so none is faked); on these
    # drivers it always comes with "nvidia" and "nvidiactl" (nvidia-modeset.ko needs nvidia.ko),
    # so no real /proc/devices makes it the one line that opens 195; its case shows that it
    # opens /dev/nvidia-modeset (and all of 195) by itself, as the drop-in means it to.
    pytest.param("current", (), {}, id="current-as-shipped"),
    pytest.param("current", alone("char-nvidia"), {}, id="current-char-nvidia-alone"),
    pytest.param("current", alone("char-nvidiactl"), {}, id="current-char-nvidiactl-alone"),
    pytest.param("current", alone("char-nvidia-modeset"), {}, id="current-char-nvidia-modeset-alone"),
    pytest.param("current", NODES_195 + GROUPS_195, dict.fromkeys(NODES_195, "EPERM"), id="current-minus-all-of-195"),
    # the MIG capabilities, on their own major: by group or by path, either suffices
    pytest.param("current", CAP_PATHS, {}, id="current-minus-path-lines-nvidia-caps"),
    pytest.param("current", ("char-nvidia-caps",), {}, id="current-minus-char-nvidia-caps"),
    pytest.param("current", CAP_PATHS + ("char-nvidia-caps",), dict.fromkeys(READ_ONLY, "EPERM"),
                 id="current-minus-both-nvidia-caps"),
]


@pytest.mark.parametrize("flavour, removed, blocked", OLLAMA_CASES)
def test_ollama_sandbox_opens_the_nodes(container, enforced, flavour, removed, blocked):
    c = container
    settings = service_settings(c, "ollama.service")
    assert ("User", "ollama") in settings and ("PrivateUsers", "yes") in settings, settings
    for target in removed:  # the case removes lines that are there
        assert any(k == "DeviceAllow" and v.split()[0] == target for k, v in settings), (target, settings)
    with driver_flavour(c, flavour):
        got = probe(c, without(settings, removed), PROBED_IN[flavour])
    print(f"\nollama.service sandbox, driver {flavour}, DeviceAllow= removed: {list(removed) or 'none'}: {got}")
    for path in PROBED_IN[flavour]:
        if path in blocked:
            assert got[path] == blocked[path], (path, got, c.nodes)
        else:
            assert got[path] in REACHED, (path, got, c.nodes)


# char-nvidia* matches every name of every flavour: nvidia-frontend; nvidia, nvidiactl,
# nvidia-modeset, nvidia-caps; nvidia-uvm. Without it nothing is open. Without nvidia_modeset
# loaded, 195 has no hyphenated name: a narrower glob (char-nvidia-*) would open nothing of it.
LOCALAID_CASES = [
    pytest.param("frontend", (), {}, id="as-shipped"),
    pytest.param("frontend", ("char-nvidia*",), dict.fromkeys(PROBED_IN["frontend"], "EPERM"), id="minus-char-nvidia*"),
    pytest.param("current", (), {}, id="current-as-shipped"),
    pytest.param("current", ("char-nvidia*",), dict.fromkeys(PROBED_IN["current"], "EPERM"),
                 id="current-minus-char-nvidia*"),
    pytest.param("current-no-modeset", (), {}, id="current-no-modeset-as-shipped"),
]


@pytest.mark.parametrize("flavour, removed, blocked", LOCALAID_CASES)
def test_localaid_sandbox_opens_the_nodes_nvml_needs(container, enforced, flavour, removed, blocked):
    c = container
    settings = service_settings(c, "localaid.service")
    for target in removed:
        assert any(k == "DeviceAllow" and v.split()[0] == target for k, v in settings), (target, settings)
    with driver_flavour(c, flavour):
        got = probe(c, without(settings, removed), PROBED_IN[flavour])
    print(f"\nlocalaid.service sandbox, driver {flavour}, DeviceAllow= removed: {list(removed) or 'none'}: {got}")
    # NVML opens nvidiactl and nvidia0 (and nvidia-cap2 for MIG); char-nvidia* covers the rest too
    for path in PROBED_IN[flavour]:
        if path in blocked:
            assert got[path] == blocked[path], (path, got, c.nodes)
        else:
            assert got[path] in REACHED, (path, got, c.nodes)
