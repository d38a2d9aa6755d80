"""The NVIDIA device nodes the loaded driver needs, and making the missing ones.

The driver itself creates no node: nvidia-modprobe does (setuid root, run by CUDA), or the udev
rules of the driver packages. Missing nodes are made the same way: `nvidia-modprobe` when it is
installed (it loads nvidia_uvm too), then mknod with the majors the kernel lists in /proc/devices
and the owner/mode the driver's parameters ask for (/proc/driver/nvidia/params).

Nothing here follows a symbolic link: nodes are looked at with lstat, and what is made is
re-owned and re-moded without following links.
"""

from __future__ import annotations

import dataclasses
import glob
import grp
import os
import pwd
import re
import stat
from typing import Callable

from localaid.procfs import PROC, Driver, _module_loaded, _read, driver_state, uvm_loaded
from localaid.provision.host import Host, Result
from localaid.provision.job import Reporter

DEV = os.environ.get("LOCALAID_DEV", "/dev")
TOOL_TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class Node:
    path: str
    major: int
    minor: int
    access: bool = True  # service users must be able to open it (caps are root's business)
    mode: int | None = None  # creation mode from the driver (caps), else the driver's params


def expected_nodes(drv: Driver, proc: str = PROC, dev: str = DEV) -> list[Node]:
    if not drv.loaded:
        return []
    nodes = []
    frontend = drv.majors.get("nvidia-frontend", drv.majors.get("nvidia", 195))
    nodes.append(Node(os.path.join(dev, "nvidiactl"), frontend, 255))
    nodes += [Node(os.path.join(dev, f"nvidia{m}"), frontend, m) for m in drv.gpu_minors]
    if _module_loaded(drv, "modeset"):
        nodes.append(Node(os.path.join(dev, "nvidia-modeset"), frontend, 254))
    uvm = drv.majors.get("nvidia-uvm")
    if uvm is not None:
        nodes += [Node(os.path.join(dev, "nvidia-uvm"), uvm, 0), Node(os.path.join(dev, "nvidia-uvm-tools"), uvm, 1)]
    caps = drv.majors.get("nvidia-caps")
    if caps is not None:
        for f in sorted(glob.glob(os.path.join(proc, "driver/nvidia/capabilities/**/*"), recursive=True)):
            text = _read(f)
            minor = re.search(r"^DeviceFileMinor:\s*(\d+)", text, re.M)
            mode = re.search(r"^DeviceFileMode:\s*(\d+)", text, re.M)
            if minor:
                nodes.append(Node(os.path.join(dev, "nvidia-caps", f"nvidia-cap{minor.group(1)}"), caps,
                                  int(minor.group(1)), access=False, mode=int(mode.group(1)) if mode else 0o400))
    return nodes


# ---------------------------------------------------------------------------- node attributes
def node_stat(path: str) -> os.stat_result | None:
    """The entry itself (a link is not followed), None when there is none."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def not_a_node(st: os.stat_result) -> str | None:
    """What the entry is when it is not a character device (None when it is one)."""
    if stat.S_ISCHR(st.st_mode):
        return None
    return next((words for test, words in _KINDS if test(st.st_mode)), "not a device")


def describe(st: os.stat_result | None) -> str:
    if st is None:
        return "missing"
    return f"{stat.filemode(st.st_mode)} {user_name(st.st_uid)}:{group_name(st.st_gid)}"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ---------------------------------------------------------------------------- one pass
@dataclasses.dataclass
class Fix:
    """One pass over the nodes: who hears about it, the machine, and what it changed or could not.

    `hook(label)` runs before every change (tests kill the process there)."""
    rep: Reporter
    host: Host = dataclasses.field(default_factory=Host)
    hook: Callable[[str], None] | None = None
    changes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)  # declined on purpose; not failures
    state: str = "ok"  # ok | no-driver | off

    def before(self, label: str) -> None:
        if self.hook:
            self.hook(label)

    def change(self, text: str, line: str | None = None, **fields: object) -> None:
        self.rep.say(line or text, **fields)
        self.changes.append(text)

    def problem(self, text: str, **fields: object) -> None:
        self.rep.warn(text, **fields)
        self.problems.append(text)

    def warning(self, text: str, **fields: object) -> None:
        self.rep.warn(text, **fields)
        self.warnings.append(text)

    def run(self, argv: list[str]) -> Result:
        r = self.host.run(argv, timeout=TOOL_TIMEOUT)
        say = self.rep.say if r.ok else self.rep.warn
        say("ran " + " ".join(argv), exit=r.rc, output=" / ".join(r.tail)[-300:] or None)
        return r


# ---------------------------------------------------------------------------- making them
def create_missing(drv: Driver, fix: Fix, proc: str = PROC, dev: str = DEV,
                   group: Callable[[], int] | None = None) -> Driver:
    """nvidia-modprobe first (as CUDA would), then mknod for whatever is still missing: as
    root:<group()> 0660 when a group is given (a node that did not exist gave nobody access, so
    nothing is taken away), else with the driver's owner and mode (mode world)."""
    nodes = expected_nodes(drv, proc, dev)
    before = {n.path: describe(node_stat(n.path)) for n in nodes}
    need_uvm = not uvm_loaded(drv)
    tool = fix.host.which("nvidia-modprobe")
    if (any(node_stat(p) is None for p in before) or need_uvm) and tool:
        argv = [tool, "-u"] + [a for m in drv.gpu_minors for a in ("-c", str(m))]
        if _module_loaded(drv, "modeset"):
            argv.append("-m")
        fix.before("nvidia-modprobe")
        fix.run(argv)
    elif need_uvm:
        fix.before("modprobe")
        fix.run(["modprobe", "nvidia-uvm"])
    drv = driver_state(proc)
    for n in expected_nodes(drv, proc, dev):
        now = node_stat(n.path)
        if now is not None:
            # nvidia-modprobe also re-owns and re-modes nodes that existed: log those too
            was = before.get(n.path, "missing")
            if describe(now) != was:
                text = (f"{n.path} created by nvidia-modprobe: {describe(now)}" if was == "missing"
                        else f"{n.path} changed by nvidia-modprobe: {was} -> {describe(now)}")
                fix.change(text, f"device node {text}")
            continue
        if group is not None and n.access:
            uid, gid, mode = 0, group(), 0o660
        else:
            uid, gid = drv.params.get("DeviceFileUID", 0), drv.params.get("DeviceFileGID", 0)
            mode = n.mode if n.mode is not None else drv.params.get("DeviceFileMode", 0o666)
        fix.before(f"create {n.path}")
        try:
            os.makedirs(os.path.dirname(n.path), exist_ok=True)
            os.mknod(n.path, stat.S_IFCHR | mode, os.makedev(n.major, n.minor))
            os.chown(n.path, uid, gid, follow_symlinks=False)
            os.chmod(n.path, mode, follow_symlinks=False)  # mknod is subject to the umask
        except (OSError, NotImplementedError) as e:
            fix.problem(f"cannot create {n.path} (char {n.major}:{n.minor}): {getattr(e, 'strerror', None) or e}")
            continue
        text = f"{n.path} created (char {n.major}:{n.minor}): {describe(node_stat(n.path))}"
        fix.change(text, f"device node {text}")
    return drv
