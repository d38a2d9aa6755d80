"""Who may open the NVIDIA device nodes, by gpu.devices.mode; the driver's own options; the pass
that makes it all right (`ensure`) and its record, /run/localaid/devices.json.

Service users: ollama, and open-webui when webui.gpu. Every change goes through set_node(),
which refuses anything but a character device and never follows a link. The pass is
idempotent: a run that is killed half-way is completed by the next one.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import time

from localaid import fsutil, paths
from localaid.procfs import PROC, driver_state
from localaid.provision.devices.nodes import (DEV, Fix, Node, create_missing, describe, expected_nodes, group_name,
                                              node_stat, not_a_node)
from localaid.provision.job import JobError, Lock

# In mode group, the driver is told the same owner and mode, so that nvidia-modprobe (setuid,
# run by every CUDA program) does not put the nodes back to its default 0666.
MODPROBE_CONF = "/etc/modprobe.d/localaid-nvidia.conf"
MODPROBE_MARK = "# written by localaid"
OLLAMA_USER, WEBUI_USER = "ollama", "open-webui"


def marker_path() -> str:
    return os.path.join(paths.RUN_DIR, "devices.json")


# ---------------------------------------------------------------------------- users and groups
def user_ids(name: str) -> tuple[int, int, tuple[int, ...]] | None:
    """(uid, gid, all groups) of a user as a new process of that user would have them."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid, tuple(sorted(set(os.getgrouplist(name, pw.pw_gid))))


def group_members(gid: int) -> list[str]:
    """Users other than root who hold the group (as a supplementary or their primary group)."""
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        members = set()
    members |= {pw.pw_name for pw in pwd.getpwall() if pw.pw_gid == gid}
    return sorted(members - {"root"})


def may_open(st: os.stat_result, uid: int, gids) -> bool:
    """Whether the permission bits let uid/gids open the node read-write (what open() checks)."""
    if uid == 0:
        return True
    mode = st.st_mode
    if st.st_uid == uid:
        bits = (mode >> 6) & 0o7
    elif st.st_gid in gids:
        bits = (mode >> 3) & 0o7
    else:
        bits = mode & 0o7
    return bits & 0o6 == 0o6


def service_users(config) -> list[str]:
    users = [OLLAMA_USER]
    if config.webui.enabled and config.webui.gpu:
        users.append(WEBUI_USER)
    return users


def ensure_group(name: str, fix: Fix) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    fix.before(f"groupadd {name}")
    r = fix.host.run(["groupadd", "--system", name], timeout=60)
    if not r.ok:
        raise JobError(f"cannot create group {name}: {r.last or f'exit {r.rc}'}", r.tail)
    fix.rep.say(f"created system group {name} for GPU access")
    return grp.getgrnam(name).gr_gid


def add_to_group(user: str, group: str, fix: Fix) -> None:
    ids = user_ids(user)
    gid = grp.getgrnam(group).gr_gid
    if ids is None or gid in ids[2]:
        return
    fix.before(f"usermod {user}")
    r = fix.host.run(["usermod", "-a", "-G", group, user], timeout=60)
    if not r.ok:
        fix.problem(f"cannot add {user} to group {group}: {r.last or f'exit {r.rc}'}")
        return
    fix.change(f"user {user} added to group {group} (GPU device access)", mode="ensure/group")


# ---------------------------------------------------------------------------- changing a node
def set_node(node: str, fix: Fix, mode_name: str, gid: int | None = None, perm: int | None = None,
             uid: int | None = None) -> None:
    """Give `node` this owner, group and permission bits. A link is never followed, and an
    entry that is not a character device is refused (a problem naming what it is)."""
    before = node_stat(node)
    if before is None:
        return
    kind = not_a_node(before)
    if kind:
        fix.problem(f"{node} is {kind}, not a character device: left alone")
        return
    fix.before(f"set {node}")
    try:
        if (gid is not None and before.st_gid != gid) or (uid is not None and before.st_uid != uid):
            os.chown(node, -1 if uid is None else uid, -1 if gid is None else gid, follow_symlinks=False)
        if perm is not None and stat.S_IMODE(before.st_mode) != perm:
            os.chmod(node, perm, follow_symlinks=False)
    except NotImplementedError:  # it became a link since the lstat: chmod refuses to follow it
        fix.problem(f"{node} became a symbolic link: left alone")
        return
    except OSError as e:
        fix.problem(f"cannot change {node}: {e.strerror}")
        return
    after = node_stat(node)
    if describe(before) != describe(after):
        text = f"{node}: {describe(before)} -> {describe(after)}"
        fix.change(text, f"device node {text}", mode=mode_name)


def fix_access(config, nodes: list[Node], fix: Fix) -> None:
    mode = config.gpu.devices.mode
    group = config.gpu.devices.group
    users = [u for u in service_users(config) if user_ids(u) is not None]
    present = []
    for n in nodes:
        st = node_stat(n.path)
        kind = not_a_node(st) if st is not None else None
        if kind:
            fix.problem(f"{n.path} is {kind}, not a character device: left alone")
        elif st is not None and n.access:
            present.append(n.path)
    if mode == "world":
        fix.rep.warn("gpu.devices.mode is world: every local user may use the GPU (mode 0666)")
        for p in present:
            set_node(p, fix, mode, perm=stat.S_IMODE(node_stat(p).st_mode) | 0o666)
        return
    if mode == "group":
        gid = ensure_group(group, fix)
        for u in users:
            add_to_group(u, group, fix)
        for p in present:
            set_node(p, fix, mode, uid=0, gid=gid, perm=0o660)
        return
    # ensure: only add access, for the service users that lack it.
    for p in present:
        for u in users:
            st = node_stat(p)
            uid, _gid, gids = user_ids(u)
            if may_open(st, uid, gids):
                continue
            node_group = group_name(st.st_gid)
            if st.st_gid != 0 and stat.S_IMODE(st.st_mode) & 0o060 == 0o060:
                add_to_group(u, node_group, fix)
                continue
            gid = ensure_group(group, fix)
            losers = group_members(st.st_gid) if st.st_gid != gid and st.st_mode & 0o070 else []
            if losers:  # re-grouping would take the node from them: ensure never does that
                fix.warning(f"{p}: {u} cannot open it, and giving it to group {group} would take it from "
                            f"{', '.join(losers)} (group {node_group}); left as it is — set gpu.devices.mode: "
                            f"group to make every node root:{group} 0660", mode=mode)
                continue
            set_node(p, fix, mode, gid=gid, perm=stat.S_IMODE(st.st_mode) | 0o060)
            add_to_group(u, group, fix)


def driver_options(config, fix: Fix, path: str | None = None) -> None:
    """Mode group: NVreg_DeviceFile{UID,GID,Mode} in modprobe.d (from the next driver load on);
    any other mode: our file removed. A file without our mark is the admin's: left alone."""
    path = path or MODPROBE_CONF
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current is not None and not current.startswith(MODPROBE_MARK):
        return
    want = None
    group = config.gpu.devices.group
    if config.gpu.devices.mode == "group":
        gid = ensure_group(group, fix)
        want = (f"{MODPROBE_MARK} (gpu.devices.mode: group in /etc/localaid/localaid.yaml): the driver\n"
                f"# and nvidia-modprobe make the NVIDIA device nodes root:{group} 0660.\n"
                f"options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID={gid} NVreg_DeviceFileMode=0660\n")
    if want == current:
        return
    fix.before("modprobe.d")
    if want is None:
        os.unlink(path)
        text = f"{path} removed (gpu.devices.mode is {config.gpu.devices.mode})"
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fsutil.atomic_write(path, want)
        text = f"{path} written: the driver keeps its nodes root:{group} 0660 from its next load"
    fix.change(text, mode=config.gpu.devices.mode)


# ---------------------------------------------------------------------------- the pass
def ensure(config, fix: Fix, proc: str = PROC, dev: str = DEV) -> Fix:
    """Make the nodes exist and be usable per gpu.devices.mode; record the result. Root only.
    One pass at a time (the udev rule and the recovery ladder may both ask)."""
    if config.gpu.devices.mode == "off":
        fix.state = "off"
        return fix
    with Lock(os.path.join(paths.RUN_DIR, "devices.lock"), "device node check", wait=True, rep=fix.rep):
        driver_options(config, fix)
        drv = driver_state(proc)
        if not drv.loaded:
            fix.state = "no-driver"
            write_marker(config, fix, [])
            return fix
        mode = config.gpu.devices.mode
        group = None if mode == "world" else (lambda: ensure_group(config.gpu.devices.group, fix))
        drv = create_missing(drv, fix, proc, dev, group)
        nodes = expected_nodes(drv, proc, dev)
        fix_access(config, nodes, fix)
        write_marker(config, fix, nodes)
    return fix


def write_marker(config, fix: Fix, nodes: list[Node]) -> None:
    """/run/localaid/devices.json: when nodes last changed (an Ollama started before that saw no
    GPU, and the supervisor restarts it), and what the last pass found."""
    previous = fsutil.read_json(marker_path())
    previous = previous if isinstance(previous, dict) else {}
    now_mono = time.monotonic()
    doc = {
        "checked_mono": now_mono,
        "checked": time.time(),
        "changed_mono": now_mono if fix.changes else previous.get("changed_mono"),
        "changed": time.time() if fix.changes else previous.get("changed"),
        "mode": config.gpu.devices.mode,
        "state": fix.state,
        "changes": fix.changes or previous.get("changes", []),
        "problems": fix.problems,
        "warnings": fix.warnings,
        "nodes": {n.path: describe(node_stat(n.path)) for n in nodes},
    }
    fix.before("marker")
    os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
    fsutil.write_json(marker_path(), doc)
