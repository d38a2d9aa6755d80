"""NVIDIA device nodes and who may open them; the GPU recovery ladder; the resume hook.

    localaid provision devices   (localaid-devices.service, root oneshot; also started by the
                                  udev rule when the driver (re)loads, and by ollama.service)
    localaid gpu recover         (localaid-gpu-recover.service: the recovery ladder)
    localaid gpu resumed KIND    (the system-sleep hook, after a resume)

The nodes: /dev/nvidiactl, /dev/nvidia<minor> per GPU, /dev/nvidia-modeset (when nvidia_modeset
is loaded), /dev/nvidia-uvm and /dev/nvidia-uvm-tools, /dev/nvidia-caps/nvidia-cap<minor>. The
driver itself creates none of them: nvidia-modprobe does (it is setuid root and run by CUDA), or
udev rules of the driver packages. Missing nodes are made the same way: `nvidia-modprobe` when it
is installed (it loads nvidia_uvm too), then mknod with the majors the kernel lists in
/proc/devices and the owner/mode the driver's parameters ask for (/proc/driver/nvidia/params).

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
saw no GPU (it looks once, at start) and the supervisor restarts it.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time

from localaid import fsutil, log, paths, progress
from localaid.procfs import PROC, Driver, _module_loaded, _read, char_majors, driver_state, uvm_loaded  # noqa: F401
from localaid.records import OLLAMA, UNITS
from localaid.vram import GIB, MIB, vram_advice  # noqa: F401

DEV = os.environ.get("LOCALAID_DEV", "/dev")
MARKER = os.path.join(paths.RUN_DIR, "devices.json")
RESUME_MARKER = os.path.join(paths.RUN_DIR, "resume.json")
RECOVER_STATE = os.path.join(paths.RUN_DIR, "gpu-recover.json")
JOB, LADDER_JOB = "devices", "gpu-recover"
DEVICES_UNIT = "localaid-devices.service"
# In mode group, the driver is told the same owner and mode, so that nvidia-modprobe (setuid,
# run by every CUDA program) does not put the nodes back to its default 0666.
MODPROBE_CONF = "/etc/modprobe.d/localaid-nvidia.conf"
MODPROBE_MARK = "# written by localaid"
LADDER_LIMIT = 2  # ladders per boot, also enforced here in case the daemon restarted
OLLAMA_USER, WEBUI_USER = "ollama", "open-webui"


class DevicesError(Exception):
    pass


# ---------------------------------------------------------------------------- the kernel's view
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
def describe(st: os.stat_result | None) -> str:
    if st is None:
        return "missing"
    return f"{stat.filemode(st.st_mode)} {_user_name(st.st_uid)}:{_group_name(st.st_gid)}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


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


# ---------------------------------------------------------------------------- making it right
@dataclasses.dataclass
class Report:
    changes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)  # declined on purpose; not failures
    state: str = "ok"  # ok | no-driver | off


def _run(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: timed out after {timeout:g} s"
    return r.returncode, (r.stdout + r.stderr).strip()


def _create_missing(drv: Driver, rep: Report, proc: str, dev: str, group: str | None = None) -> Driver:
    """nvidia-modprobe first (as CUDA would), then mknod for whatever is still missing: as
    root:<group> 0660 when a group is given (a node that did not exist gave nobody access,
    so nothing is taken away), else with the driver's owner and mode (mode world)."""
    nodes = expected_nodes(drv, proc, dev)
    before = {n.path: describe(_stat(n.path)) for n in nodes}
    need_uvm = not uvm_loaded(drv)
    tool = shutil.which("nvidia-modprobe")
    if (any(_stat(p) is None for p in before) or need_uvm) and tool:
        argv = [tool, "-u"] + [a for m in drv.gpu_minors for a in ("-c", str(m))]
        if _module_loaded(drv, "modeset"):
            argv.append("-m")
        rc, out = _run(argv)
        (log.info if rc == 0 else log.warning)("ran " + " ".join(argv), exit=rc, output=out[-300:] or None)
    elif need_uvm:
        rc, out = _run(["modprobe", "nvidia-uvm"])
        (log.info if rc == 0 else log.warning)("ran modprobe nvidia-uvm", exit=rc, output=out[-300:] or None)
    drv = driver_state(proc)
    for n in expected_nodes(drv, proc, dev):
        now = _stat(n.path)
        if now is not None:
            # nvidia-modprobe also re-owns and re-modes nodes that existed: log those too
            was = before.get(n.path, "missing")
            if describe(now) != was:
                text = (f"{n.path} created by nvidia-modprobe: {describe(now)}" if was == "missing"
                        else f"{n.path} changed by nvidia-modprobe: {was} -> {describe(now)}")
                log.notice(f"device node {text}")
                rep.changes.append(text)
            continue
        if group is not None and n.access:
            uid, gid, mode = 0, _ensure_group(group), 0o660
        else:
            uid, gid = drv.params.get("DeviceFileUID", 0), drv.params.get("DeviceFileGID", 0)
            mode = n.mode if n.mode is not None else drv.params.get("DeviceFileMode", 0o666)
        os.makedirs(os.path.dirname(n.path), exist_ok=True)
        try:
            os.mknod(n.path, stat.S_IFCHR | mode, os.makedev(n.major, n.minor))
            os.chown(n.path, uid, gid)
            os.chmod(n.path, mode)  # mknod is subject to the umask
        except OSError as e:
            rep.problems.append(f"cannot create {n.path} (char {n.major}:{n.minor}): {e.strerror}")
            continue
        text = f"{n.path} created (char {n.major}:{n.minor}): {describe(_stat(n.path))}"
        log.notice(f"device node {text}")
        rep.changes.append(text)
    return drv


def _ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    rc, out = _run(["groupadd", "--system", name])
    if rc != 0:
        raise DevicesError(f"cannot create group {name}: {out}")
    log.notice(f"created system group {name} for GPU access")
    return grp.getgrnam(name).gr_gid


def _add_to_group(user: str, group: str, rep: Report) -> None:
    ids = user_ids(user)
    gid = grp.getgrnam(group).gr_gid
    if ids is None or gid in ids[2]:
        return
    rc, out = _run(["usermod", "-a", "-G", group, user])
    if rc != 0:
        rep.problems.append(f"cannot add {user} to group {group}: {out}")
        return
    text = f"user {user} added to group {group} (GPU device access)"
    log.notice(text, mode="ensure/group")
    rep.changes.append(text)


def _set(node: str, rep: Report, mode_name: str, gid: int | None = None, perm: int | None = None,
         uid: int | None = None) -> None:
    before = _stat(node)
    if before is None:
        return
    try:
        if (gid is not None and before.st_gid != gid) or (uid is not None and before.st_uid != uid):
            os.chown(node, -1 if uid is None else uid, -1 if gid is None else gid)
        if perm is not None and stat.S_IMODE(before.st_mode) != perm:
            os.chmod(node, perm)
    except OSError as e:
        rep.problems.append(f"cannot change {node}: {e.strerror}")
        return
    after = _stat(node)
    if describe(before) != describe(after):
        text = f"{node}: {describe(before)} -> {describe(after)}"
        log.notice(f"device node {text}", mode=mode_name)
        rep.changes.append(text)


def fix_access(config, nodes: list[Node], rep: Report) -> None:
    mode = config.gpu.devices.mode
    group = config.gpu.devices.group
    users = [u for u in service_users(config) if user_ids(u) is not None]
    present = [n.path for n in nodes if n.access and _stat(n.path) is not None]
    if mode == "world":
        log.warning("gpu.devices.mode is world: every local user may use the GPU (mode 0666)")
        for p in present:
            _set(p, rep, mode, perm=stat.S_IMODE(_stat(p).st_mode) | 0o666)
        return
    if mode == "group":
        gid = _ensure_group(group)
        for u in users:
            _add_to_group(u, group, rep)
        for p in present:
            _set(p, rep, mode, uid=0, gid=gid, perm=0o660)
        return
    # ensure: only add access, for the service users that lack it.
    for p in present:
        for u in users:
            st = _stat(p)
            uid, _gid, gids = user_ids(u)
            if may_open(st, uid, gids):
                continue
            node_group = _group_name(st.st_gid)
            if st.st_gid != 0 and stat.S_IMODE(st.st_mode) & 0o060 == 0o060:
                _add_to_group(u, node_group, rep)
                continue
            gid = _ensure_group(group)
            losers = group_members(st.st_gid) if st.st_gid != gid and st.st_mode & 0o070 else []
            if losers:  # re-grouping would take the node from them: ensure never does that
                text = (f"{p}: {u} cannot open it, and giving it to group {group} would take it from "
                        f"{', '.join(losers)} (group {node_group}); left as it is — set gpu.devices.mode: "
                        f"group to make every node root:{group} 0660")
                log.warning(text, mode=mode)
                rep.warnings.append(text)
                continue
            _set(p, rep, mode, gid=gid, perm=stat.S_IMODE(st.st_mode) | 0o060)
            _add_to_group(u, group, rep)


def driver_options(config, rep: Report, path: str = MODPROBE_CONF) -> None:
    """Mode group: NVreg_DeviceFile{UID,GID,Mode} in modprobe.d (from the next driver load on);
    any other mode: our file removed. A file without our mark is the admin's: left alone."""
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current is not None and not current.startswith(MODPROBE_MARK):
        return
    want = None
    if config.gpu.devices.mode == "group":
        gid = _ensure_group(config.gpu.devices.group)
        want = (f"{MODPROBE_MARK} (gpu.devices.mode: group in /etc/localaid/localaid.yaml): the driver\n"
                f"# and nvidia-modprobe make the NVIDIA device nodes root:{config.gpu.devices.group} 0660.\n"
                f"options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID={gid} NVreg_DeviceFileMode=0660\n")
    if want == current:
        return
    if want is None:
        os.unlink(path)
        text = f"{path} removed (gpu.devices.mode is {config.gpu.devices.mode})"
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fsutil.atomic_write(path, want)
        text = f"{path} written: the driver keeps its nodes root:{config.gpu.devices.group} 0660 from its next load"
    log.notice(text, mode=config.gpu.devices.mode)
    rep.changes.append(text)


def ensure(config, proc: str = PROC, dev: str = DEV) -> Report:
    """Make the nodes exist and be usable per gpu.devices.mode; record the result. Root only."""
    rep = Report()
    if config.gpu.devices.mode == "off":
        rep.state = "off"
        return rep
    driver_options(config, rep)
    drv = driver_state(proc)
    if not drv.loaded:
        rep.state = "no-driver"
        write_marker(config, rep, [])
        return rep
    mode = config.gpu.devices.mode
    drv = _create_missing(drv, rep, proc, dev, None if mode == "world" else config.gpu.devices.group)
    nodes = expected_nodes(drv, proc, dev)
    fix_access(config, nodes, rep)
    write_marker(config, rep, nodes)
    return rep


def write_marker(config, rep: Report, nodes: list[Node]) -> None:
    previous = fsutil.read_json(MARKER)
    previous = previous if isinstance(previous, dict) else {}
    now_mono = time.monotonic()
    doc = {
        "checked_mono": now_mono,
        "checked": time.time(),
        "changed_mono": now_mono if rep.changes else previous.get("changed_mono"),
        "changed": time.time() if rep.changes else previous.get("changed"),
        "mode": config.gpu.devices.mode,
        "state": rep.state,
        "changes": rep.changes or previous.get("changes", []),
        "problems": rep.problems,
        "warnings": rep.warnings,
        "nodes": {n.path: describe(_stat(n.path)) for n in nodes},
    }
    os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
    fsutil.write_json(MARKER, doc)


def devices_main(args, config) -> int:
    """`localaid provision devices`: localaid-devices.service."""
    mode = config.gpu.devices.mode
    if mode == "off":
        log.info("gpu.devices.mode is off: device nodes left alone")
        return 0
    progress.report(JOB, "running", "checking NVIDIA device nodes")
    try:
        rep = ensure(config)
    except (OSError, DevicesError) as e:
        progress.report(JOB, "failed", f"device nodes: {e}")
        log.error("device nodes not fixed", error=e, mode=mode)
        return 1
    if rep.state == "no-driver":
        text = "NVIDIA driver not loaded: no device nodes to check (running on CPU)"
    elif rep.problems:
        text = "device nodes: " + "; ".join(rep.problems)
    elif rep.changes:
        text = f"device nodes fixed ({len(rep.changes)} change{'s' if len(rep.changes) != 1 else ''}, mode {mode})"
    else:
        text = f"device nodes ok (mode {mode})"
    for p in rep.problems:
        log.error(p, mode=mode)
    log.info(text)
    progress.report(JOB, "failed" if rep.problems else "done", text)
    return 1 if rep.problems else 0


# ---------------------------------------------------------------------------- recovery ladder
def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id").strip()


def _wait_state(sd, unit: str, states: tuple[str, ...], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        st = sd.state(unit)
        if st.active_state in states and not st.job:
            return st.active_state
        if time.monotonic() > deadline:
            return st.active_state
        time.sleep(0.2)


def gpu_recover_main(args, config, systemd=None) -> int:
    """`localaid gpu recover`: localaid-gpu-recover.service. Stop ollama, reload nvidia_uvm,
    recreate the device nodes, start ollama. Exit 0 when the GPU answers NVML afterwards."""
    from localaid.adapters.gpu import Gpu
    from localaid.adapters.systemd import Systemd, SystemdError
    sd = systemd or Systemd(timeout=30)
    unit = UNITS[OLLAMA]
    boot = _boot_id()
    record = fsutil.read_json(RECOVER_STATE)
    record = record if isinstance(record, dict) and record.get("boot_id") == boot else {"boot_id": boot,
                                                                                          "attempts": 0}
    if record["attempts"] >= LADDER_LIMIT:
        text = f"GPU recovery already tried {record['attempts']} times since boot: reboot required"
        progress.report(LADDER_JOB, "failed", text)
        log.error(text)
        return 1
    record["attempts"] += 1
    os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
    fsutil.write_json(RECOVER_STATE, record)
    steps = (4 if config.gpu.devices.mode != "off" else 3)
    done = 0
    current = ["", 0.0]  # the step under way, since when

    def step(text: str) -> None:
        nonlocal done
        progress.report(LADDER_JOB, "running", text, done / (steps + 1))
        log.notice(f"GPU recovery: {text}", attempt=record["attempts"])
        current[:] = [text, time.monotonic()]
        done += 1

    def outcome(text: str, ok: bool = True) -> None:
        (log.notice if ok else log.warning)(f"GPU recovery: {current[0]}: {text}", attempt=record["attempts"],
                                            took=f"{time.monotonic() - current[1]:.1f}s")

    os.makedirs(paths.MAINTENANCE_DIR, mode=0o755, exist_ok=True)
    hold = os.path.join(paths.MAINTENANCE_DIR, OLLAMA)
    fsutil.atomic_write(hold, f"{os.getpid()}\n")
    started = time.monotonic()
    failure = None
    unloaded = False
    try:
        step("stopping ollama")
        try:
            sd.stop(unit)
            state = _wait_state(sd, unit, ("inactive", "failed"), 90)
        except SystemdError as e:
            raise DevicesError(f"cannot stop {unit}: {e}")
        if state not in ("inactive", "failed"):
            raise DevicesError(f"{unit} still {state} after 90 s: nvidia_uvm cannot be reloaded under it")
        outcome(f"stopped ({state})")
        step("reloading nvidia_uvm")
        drv = driver_state()
        if not drv.loaded:
            raise DevicesError("NVIDIA driver not loaded")
        # modprobe rather than rmmod: it resolves the alias to Debian's nvidia-current-uvm too.
        if uvm_loaded(drv):
            rc, out = _run(["modprobe", "-r", "nvidia-uvm"])
            unloaded = rc == 0
            if not unloaded:  # still in use by another CUDA program: load anyway, it may be enough
                outcome(f"not unloaded (modprobe -r exit {rc}: {out[-200:] or 'in use?'}); loading anyway",
                        ok=False)
        else:
            unloaded = True
        rc, out = _run(["modprobe", "nvidia-uvm"])
        if rc != 0:
            raise DevicesError(f"modprobe nvidia-uvm failed: {out[-200:] or f'exit {rc}'}")
        outcome("nvidia_uvm reloaded" if unloaded else "nvidia_uvm loaded (it was never unloaded)")
        if config.gpu.devices.mode != "off":
            step("recreating device nodes")
            rep = ensure(config)
            if rep.problems:
                raise DevicesError("; ".join(rep.problems))
            outcome(f"{len(rep.changes)} change(s)" if rep.changes else "nothing to change")
        gpu = Gpu(config, events=False)
        obs = gpu.observe()
        gpu.close()
        if obs.state == "lost":
            raise DevicesError("GPU still lost after reloading nvidia_uvm: reboot required")
        if obs.state != "ok":
            raise DevicesError(f"GPU not usable after reloading nvidia_uvm: {obs.error or obs.state}")
    except (DevicesError, OSError) as e:
        failure = str(e)
    finally:
        try:
            os.unlink(hold)
        except FileNotFoundError:
            pass
    step("starting ollama")  # also after a failure: the CPU is better than nothing
    try:
        sd.start(unit)
        state = _wait_state(sd, unit, ("active", "failed", "inactive"), 60)
        outcome(state, ok=state == "active")
        if state != "active" and failure is None:
            failure = f"{unit} is {state} after the restart"
    except SystemdError as e:
        outcome(f"failed: {e}", ok=False)
        failure = failure or f"cannot start {unit}: {e}"
    took = time.monotonic() - started
    if failure:
        progress.report(LADDER_JOB, "failed", failure)
        log.error(f"GPU recovery failed: {failure}", attempt=record["attempts"], took=f"{took:.1f}s")
        return 1
    text = f"GPU recovered in {took:.1f} s: nvidia_uvm {'reloaded' if unloaded else 'loaded'}, ollama restarted"
    progress.report(LADDER_JOB, "done", text, 1.0)
    log.notice(text, attempt=record["attempts"])
    return 0


# ---------------------------------------------------------------------------- resume hook
def resumed_main(args, config, systemd=None) -> int:
    """`localaid gpu resumed [KIND]`: run by the system-sleep hook after a resume. Records the
    moment, re-checks the device nodes and wakes the supervisor for an immediate cycle."""
    from localaid.adapters.systemd import Systemd, SystemdError
    kind = getattr(args, "kind", None) or "suspend"
    os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
    fsutil.write_json(RESUME_MARKER, {"mono": time.monotonic(), "wall": time.time(), "kind": kind})
    log.notice("resumed from sleep: checking the GPU", kind=kind)
    sd = systemd or Systemd(timeout=5)
    rc = 0
    if config.gpu.devices.mode != "off":
        try:
            sd.start(DEVICES_UNIT)  # queued, not waited for
        except SystemdError as e:
            log.warning(f"cannot start {DEVICES_UNIT}", error=e)
            rc = 1
    try:
        sd.kill("localaid.service", "main", int(signal.SIGUSR1))
    except SystemdError as e:
        log.info("localaid.service not signalled (not running?)", error=e)
    return rc


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


def doctor_checks(config) -> list:
    from localaid.records import Check
    from localaid.adapters.gpu import Gpu
    checks = []
    gpu = Gpu(config, events=False)
    obs = gpu.observe()
    gpu.close()
    from localaid.policy_gpu import gpu_label
    if obs.state == "ok":
        checks.append(Check("gpu", True, f"{gpu_label(obs)} (driver {obs.driver or '?'})"))
    elif obs.state == "none":
        checks.append(Check("gpu", None, f"{obs.error or 'no NVIDIA GPU found'}: running on CPU",
                            "install the NVIDIA driver (Debian: nvidia-driver from non-free) for GPU speed"))
    else:
        checks.append(Check("gpu", False, obs.error or obs.state,
                            "GPU lost: reboot; if it recurs check power, cooling and `journalctl -k | grep Xid`"))

    mode = config.gpu.devices.mode
    drv = driver_state()
    nodes = expected_nodes(drv)
    fix = "systemctl start localaid-devices.service (or set gpu.devices.mode)"
    if not drv.loaded:
        if obs.state == "ok":
            checks.append(Check("gpu devices", None, f"cannot read the driver's state in {PROC}"))
    else:
        missing = [n.path for n in nodes if _stat(n.path) is None]
        if missing:
            checks.append(Check("gpu devices", False, "missing: " + ", ".join(missing),
                                fix if mode != "off" else "nvidia-modprobe -u -c0 (gpu.devices.mode is off)"))
        else:
            checks.append(Check("gpu devices", True, ", ".join(f"{os.path.basename(n.path)} {describe(_stat(n.path))}"
                                                            for n in nodes if n.access)))
        if mode == "world":
            checks.append(Check("gpu devices mode", None, "gpu.devices.mode is world: every local user may use "
                                "the GPU", "gpu.devices.mode: group (or ensure) limits it to the service users"))
        present = [n.path for n in nodes if n.access and _stat(n.path) is not None]
        root = os.geteuid() == 0  # opening a node as another user needs setgroups/setuid
        if not root:
            checks.append(Check("device access per user", True, "run as root (sudo localaid doctor) to test",
                                skipped=True))
        for user, results in (access_matrix(config, present) if root else {}).items():
            denied = {p: e for p, e in results.items() if e not in (0, errno.ENXIO)}
            nxio = [p for p, e in results.items() if e == errno.ENXIO]
            if denied:
                why = ", ".join(f"{os.path.basename(p)}: {os.strerror(e) if e < 98 else 'error'}"
                                for p, e in denied.items())
                checks.append(Check(f"gpu access {user}", False, f"{user} cannot open {why}", fix))
            elif nxio:
                checks.append(Check(f"gpu access {user}", None,
                                    f"{user} may open the nodes, but no driver answers behind "
                                    + ", ".join(os.path.basename(p) for p in nxio) + " (ENXIO)",
                                    "the nodes' majors do not match the loaded driver: reload it or reboot"))
            else:
                checks.append(Check(f"gpu access {user}", True,
                                    f"{user} opens all {len(results)} NVIDIA nodes read-write"))

    if obs.state == "ok" and config.ollama.models:
        checks += _vram_checks(config, max(d.memory_total for d in obs.devices))
    return checks


def _vram_checks(config, gpu_total: int) -> list:
    """VRAM advice for each configured model, sizes from Ollama's list of installed models."""
    from localaid.records import Check
    from localaid.adapters import http
    from localaid.adapters.ollama import parse_installed
    from localaid.adapters.ollama import installed_size
    from localaid.vram import vram_note
    probe, body = http.request(config.ollama.url + "/api/tags", 3.0)
    if not probe.ok:
        return [Check("vram", None, f"no VRAM advice: cannot list Ollama's models ({probe.error})",
                      "start Ollama: systemctl start ollama")]
    installed = parse_installed(body)
    checks = []
    for spec in config.ollama.models:
        size = installed_size(spec.name, installed)
        fits, text = vram_note(size, gpu_total)
        advice = "pick a smaller variant (fewer parameters or a lower quantisation)" if size else \
            f"localaid pull {spec.name} (localaid also pulls configured models itself)"
        checks.append(Check(f"vram {spec.name}", True if fits else None, text, "" if fits else advice))
    return checks
