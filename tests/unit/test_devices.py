"""localaid/provision/devices/: the kernel's view, node creation, permission logic, advice, hooks.

Node creation uses real mknod (root only) in a temporary /dev; the permission *changes* for real
users (usermod, chgrp) are covered in a container by tests/integration/test_gpu.py.
"""

from __future__ import annotations

import errno
import json
import io
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from dataclasses import replace

from localaid import log, paths
from localaid.config import Config
from localaid.provision import devices
from localaid.provision.devices import access, nodes
from localaid.provision.devices.doctor import _open_as
from localaid.provision.job import Reporter

GIB = 2**30
ROOT = os.geteuid() == 0


def new_fix():
    return devices.Fix(Reporter(None, terminal=False))


def char_node(path, mode, minor=3):
    """A real character device (1:3 is /dev/null's number; nothing here opens it)."""
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(1, minor))
    os.chmod(path, mode)


def fake_proc(tmp_path, uvm=True, modeset=False, caps=False, mode=438, gpus=(0,)):
    proc = tmp_path / "proc"
    (proc / "driver/nvidia").mkdir(parents=True, exist_ok=True)
    chars = ["  1 mem", "195 nvidia-frontend"] + (["511 nvidia-uvm"] if uvm else []) + (["236 nvidia-caps"] if caps else [])
    (proc / "devices").write_text("Character devices:\n" + "\n".join(chars) + "\n\nBlock devices:\n195 notchar\n")
    mods = ["nvidia 1 0 - Live 0x0"] + (["nvidia_uvm 1 0 - Live 0x0"] if uvm else []) + \
        (["nvidia_modeset 1 0 - Live 0x0"] if modeset else [])
    (proc / "modules").write_text("\n".join(mods) + "\n")
    for i, m in enumerate(gpus):
        d = proc / f"driver/nvidia/gpus/0000:0{i + 1}:00.0"
        d.mkdir(parents=True, exist_ok=True)
        (d / "information").write_text(f"Model: \t x\nDevice Minor: \t {m}\n")
    (proc / "driver/nvidia/params").write_text(f"DeviceFileUID: 0\nDeviceFileGID: 0\nDeviceFileMode: {mode}\n")
    if caps:
        (proc / "driver/nvidia/capabilities/mig").mkdir(parents=True)
        (proc / "driver/nvidia/capabilities/mig/config").write_text("DeviceFileMinor: 1\nDeviceFileMode: 256\n")
    return str(proc)


def test_majors_only_from_the_character_section(tmp_path):
    proc = fake_proc(tmp_path, caps=True)
    assert devices.char_majors(proc) == {"mem": 1, "nvidia-frontend": 195, "nvidia-uvm": 511, "nvidia-caps": 236}


def test_expected_nodes(tmp_path):
    proc = fake_proc(tmp_path, modeset=True, caps=True, gpus=(0, 1))
    drv = devices.driver_state(proc)
    assert drv.loaded and drv.gpu_minors == (0, 1) and drv.params["DeviceFileMode"] == 0o666
    nodes = {n.path: (n.major, n.minor, n.access) for n in devices.expected_nodes(drv, proc, "/d")}
    assert nodes == {"/d/nvidiactl": (195, 255, True), "/d/nvidia0": (195, 0, True), "/d/nvidia1": (195, 1, True),
                     "/d/nvidia-modeset": (195, 254, True), "/d/nvidia-uvm": (511, 0, True),
                     "/d/nvidia-uvm-tools": (511, 1, True), "/d/nvidia-caps/nvidia-cap1": (236, 1, False)}


def test_no_driver_no_nodes(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "devices").write_text("Character devices:\n  1 mem\n")
    (proc / "modules").write_text("ext4 1 0 - Live 0x0\n")
    drv = devices.driver_state(str(proc))
    assert not drv.loaded and devices.expected_nodes(drv, str(proc), "/d") == []


def test_may_open_follows_owner_group_other_precedence():
    def st(mode, uid=0, gid=44):
        return SimpleNamespace(st_mode=stat.S_IFCHR | mode, st_uid=uid, st_gid=gid)
    assert devices.may_open(st(0o660), 1000, (44,))
    assert not devices.may_open(st(0o660), 1000, (1000,))
    assert devices.may_open(st(0o666), 1000, (1000,))
    assert not devices.may_open(st(0o606), 1000, (44,))  # group bits apply, not other's
    assert not devices.may_open(st(0o640), 1000, (44,))  # read-only is not enough
    assert devices.may_open(st(0o600, uid=1000), 1000, ())
    assert devices.may_open(st(0o000), 0, ())


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_missing_nodes_are_made_with_the_drivers_mode_and_logged(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    proc = fake_proc(tmp_path, mode=0o660)
    dev = tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-modprobe
    rep = new_fix()
    nodes.create_missing(devices.driver_state(proc), rep, proc, str(dev))
    made = {p.name: p.lstat() for p in dev.iterdir()}
    assert sorted(made) == ["nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidiactl"]
    assert all(stat.S_ISCHR(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o660 for s in made.values())
    assert (os.major(made["nvidia-uvm-tools"].st_rdev), os.minor(made["nvidia-uvm-tools"].st_rdev)) == (511, 1)
    assert (os.major(made["nvidiactl"].st_rdev), os.minor(made["nvidiactl"].st_rdev)) == (195, 255)
    assert len(rep.changes) == 4 and not rep.problems
    assert "device node " + str(dev / "nvidiactl") + " created (char 195:255): crw-rw---- root:root" \
        in out.getvalue()
    rep = new_fix()
    nodes.create_missing(devices.driver_state(proc), rep, proc, str(dev))
    assert rep.changes == []  # idempotent


def test_missing_nodes_made_for_the_group_not_the_world(tmp_path, monkeypatch):
    """ensure/group: a node that did not exist gave nobody access, so it is made root:<group>
    0660 even where the driver would say 0666; capability nodes keep their own mode."""
    monkeypatch.setattr(log, "stream", io.StringIO())
    proc = fake_proc(tmp_path, mode=0o666, caps=True)
    dev = tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    nodes.create_missing(devices.driver_state(proc), new_fix(), proc, str(dev), group=lambda: 44)
    for name in ("nvidiactl", "nvidia0", "nvidia-uvm", "nvidia-uvm-tools"):
        st = (dev / name).lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, 44), name
    assert stat.S_IMODE((dev / "nvidia-caps/nvidia-cap1").lstat().st_mode) == 0o400


def test_what_nvidia_modprobe_changes_on_existing_nodes_is_logged(tmp_path, monkeypatch):
    """The real nvidia-modprobe also re-modes nodes that exist (to the driver's parameters)."""
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    proc = fake_proc(tmp_path, uvm=False)
    dev = tmp_path / "dev"
    dev.mkdir()
    for name, minor in (("nvidiactl", 255), ("nvidia0", 0)):
        os.mknod(dev / name, stat.S_IFCHR | 0o600, os.makedev(195, minor))
    tool = tmp_path / "bin/nvidia-modprobe"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\n/bin/chmod 666 {dev}/nvidiactl {dev}/nvidia0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tool.parent))
    rep = new_fix()
    nodes.create_missing(devices.driver_state(proc), rep, proc, str(dev), group=lambda: 44)
    assert f"{dev}/nvidiactl changed by nvidia-modprobe: crw------- root:root -> crw-rw-rw- root:root" \
        in rep.changes
    assert "changed by nvidia-modprobe" in out.getvalue()


def test_group_mode_tells_the_driver_and_other_modes_take_it_back(tmp_path, monkeypatch):
    """nvidia-modprobe (setuid, run by CUDA programs) re-modes nodes to the driver's parameters:
    in mode group those become root:<group> 0660 too. Leaving mode group removes our file; a
    file the admin wrote is never touched."""
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setattr(access, "ensure_group", lambda name, fix: 44)
    conf = str(tmp_path / "modprobe.d/localaid-nvidia.conf")
    group = replace(Config(), gpu=replace(Config().gpu, devices=replace(Config().gpu.devices, mode="group")))
    rep = new_fix()
    devices.driver_options(group, rep, conf)
    text = open(conf).read()
    assert "options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID=44 NVreg_DeviceFileMode=0660" in text
    assert rep.changes and "next load" in rep.changes[0]
    rep = new_fix()
    devices.driver_options(group, rep, conf)
    assert rep.changes == []  # idempotent
    devices.driver_options(Config(), new_fix(), conf)  # back to ensure
    assert not os.path.exists(conf)
    with open(conf, "w") as f:
        f.write("options nvidia NVreg_DeviceFileMode=0600\n")
    devices.driver_options(group, new_fix(), conf)
    assert open(conf).read() == "options nvidia NVreg_DeviceFileMode=0600\n"


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_fix_access_ensure_uses_the_nodes_group_or_the_configured_one(tmp_path, monkeypatch):
    """ensure: which group a user is put in, and which nodes get g+rw, never fewer bits."""
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for p, mode in ((a, 0o660), (b, 0o600), (c, 0o666)):
        char_node(p, mode)
    os.chown(a, 0, 44)  # a: group 44 with rw → join it; b: root only → re-group to video, g+rw
    users = {"ollama": (999, 999, (999,))}
    added, regrouped = [], []
    monkeypatch.setattr(access, "service_users", lambda cfg: ["ollama"])
    monkeypatch.setattr(access, "user_ids", lambda u: users.get(u))
    monkeypatch.setattr(access, "group_name", lambda gid: {44: "video", 0: "root"}.get(gid, str(gid)))
    monkeypatch.setattr(access, "ensure_group", lambda name, fix: 44)
    monkeypatch.setattr(access, "add_to_group", lambda u, g, fix: added.append((u, g)))
    monkeypatch.setattr(access, "group_members", lambda gid: [])
    real_set = access.set_node
    monkeypatch.setattr(access, "set_node", lambda node, fix, m, **kw: (regrouped.append((os.path.basename(node), kw)),
                                                                        real_set(node, fix, m, **kw)))
    nodes = [devices.Node(str(p), 195, i) for i, p in enumerate((a, b, c))]
    devices.fix_access(Config(), nodes, new_fix())
    assert added == [("ollama", "video"), ("ollama", "video")]
    assert regrouped == [("b", {"gid": 44, "perm": 0o660})]
    assert stat.S_IMODE(b.stat().st_mode) == 0o660 and b.stat().st_gid == 44
    assert stat.S_IMODE(c.stat().st_mode) == 0o666  # nothing taken away


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_ensure_never_regroups_a_node_whose_group_others_use(tmp_path, monkeypatch):
    """root:root 0660 with a non-root user in group root: moving the node to video would lock that
    user out. ensure leaves it, says why and what to do, and the problem is reported."""
    node = tmp_path / "nvidia0"
    char_node(node, 0o660)  # owned by root:root in this test (we run as root)
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    monkeypatch.setattr(access, "service_users", lambda cfg: ["ollama"])
    monkeypatch.setattr(access, "user_ids", lambda u: (999, 999, (999,)))
    monkeypatch.setattr(access, "ensure_group", lambda name, fix: 44)
    monkeypatch.setattr(access, "group_members", lambda gid: ["backup-op"] if gid == 0 else [])
    monkeypatch.setattr(access, "add_to_group", lambda u, g, fix: pytest.fail("no group change"))
    rep = new_fix()
    devices.fix_access(Config(), [devices.Node(str(node), 195, 0)], rep)
    assert node.stat().st_gid == 0 and stat.S_IMODE(node.stat().st_mode) == 0o660
    assert rep.changes == rep.problems == [] and "would take it from backup-op (group root)" in rep.warnings[0]
    assert "gpu.devices.mode: group" in out.getvalue()


def test_group_members_counts_primary_groups():
    assert "root" not in devices.group_members(0)
    assert isinstance(devices.group_members(2**31), list)


def test_vram_advice_seed_example():
    fits, text = devices.vram_advice(int(5.2e9), 8 * GIB)
    assert not fits
    assert text == ("5.2 GB model needs ~8.3 GiB of VRAM with KV cache; this 8 GB GPU would run part of it on "
                    "the CPU (several times slower). Models up to 5.0 GB fit, or use a 12 GB card")
    fits, text = devices.vram_advice(int(5.2e9), 12 * GIB)
    assert fits and text == "5.2 GB model fits this 12 GB GPU (needs ~8.3 GiB with KV cache)"
    assert devices.vram_advice(int(40e9), 24 * GIB)[1].endswith("or use a 80 GB card")
    assert "Models up to 0.0 GB fit" in devices.vram_advice(int(1e9), GIB // 2)[1]


@pytest.mark.skipif(not ROOT, reason="setuid needs root")
def test_open_as_reports_the_errno_of_the_user():
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))  # a path nobody may traverse
    tmp_path.chmod(0o755)
    f = tmp_path / "node"
    f.write_text("")
    f.chmod(0o600)
    nobody = devices.user_ids("nobody")
    assert _open_as(str(f), nobody[0], nobody[1], nobody[2]) == errno.EACCES
    f.chmod(0o666)
    assert _open_as(str(f), nobody[0], nobody[1], nobody[2]) == 0
    assert _open_as(str(tmp_path / "missing"), *nobody) == errno.ENOENT
    shutil.rmtree(tmp_path)


class RecordingSystemd:
    def __init__(self, fail=()):
        self.calls = []
        self.fail = fail

    def start(self, name, mode="replace"):
        self.calls.append(("start", name))

    def kill(self, name, who="all", signal=9):
        from localaid.adapters.systemd import SystemdError
        self.calls.append(("kill", name, who, signal))
        if "kill" in self.fail:
            raise SystemdError("KillUnit: Unit localaid.service not loaded.")


def test_resume_hook_records_starts_the_devices_job_and_wakes_the_daemon(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUN_DIR", str(tmp_path))
    sd = RecordingSystemd()
    before = time.monotonic()
    assert devices.resumed_main(SimpleNamespace(kind="hibernate"), Config(), systemd=sd) == 0
    doc = json.loads((tmp_path / "resume.json").read_text())
    assert doc["kind"] == "hibernate" and before <= doc["mono"] <= time.monotonic()
    assert sd.calls == [("start", "localaid-devices.service"), ("kill", "localaid.service", "main", 10)]
    # the daemon not running is not an error of the hook
    assert devices.resumed_main(SimpleNamespace(kind=None), Config(), systemd=RecordingSystemd(("kill",))) == 0


def test_debians_renamed_modules_count_as_loaded(tmp_path):
    proc = fake_proc(tmp_path, uvm=False)
    (tmp_path / "proc/modules").write_text("nvidia_current 1 0 - Live 0x0\nnvidia_current_uvm 1 0 - Live 0x0\n"
                                           "nvidia_current_modeset 1 0 - Live 0x0\n")
    drv = devices.driver_state(proc)
    assert drv.loaded and devices.uvm_loaded(drv)
    assert str(Path("/d/nvidia-modeset")) in [n.path for n in devices.expected_nodes(drv, proc, "/d")]


# ------------------------------------------------------------------------------ links and non-nodes
def world():
    return replace(Config(), gpu=replace(Config().gpu, devices=replace(Config().gpu.devices, mode="world")))


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_a_link_in_place_of_a_node_is_refused_and_not_followed(tmp_path, monkeypatch):
    """A service user able to plant a link where a node belongs must not get chmod 0666 of the
    link's target (a root-only file). The link is named as such and left alone."""
    monkeypatch.setattr(log, "stream", io.StringIO())
    target = tmp_path / "shadow"
    target.write_text("secret")
    target.chmod(0o600)
    (tmp_path / "nvidia0").symlink_to(target)
    char_node(tmp_path / "nvidiactl", 0o600)
    nodes_ = [devices.Node(str(tmp_path / "nvidiactl"), 195, 255), devices.Node(str(tmp_path / "nvidia0"), 195, 0)]
    monkeypatch.setattr(access, "ensure_group", lambda name, fix: 44)
    for mode, want in (("world", (0o666, 0)), ("group", (0o660, 44))):
        cfg = replace(Config(), gpu=replace(Config().gpu, devices=replace(Config().gpu.devices, mode=mode)))
        fix = new_fix()
        devices.fix_access(cfg, nodes_, fix)
        assert (stat.S_IMODE(target.stat().st_mode), target.stat().st_gid) == (0o600, 0), mode
        assert fix.problems == [f"{tmp_path}/nvidia0 is a symbolic link, not a character device: left alone"]
        real = (tmp_path / "nvidiactl").lstat()  # the real node is fixed
        assert (stat.S_IMODE(real.st_mode), real.st_gid) == want
    assert devices.describe(nodes.node_stat(str(tmp_path / "nvidia0"))).startswith("lrwxrwxrwx")


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_set_node_refuses_anything_but_a_character_device(tmp_path, monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    fix = new_fix()
    for name in ("file", "dir", "fifo", "link"):
        access.set_node(str(tmp_path / name), fix, "group", uid=0, gid=44, perm=0o660)
    assert fix.problems == [f"{tmp_path}/file is a regular file, not a character device: left alone",
                            f"{tmp_path}/dir is a directory, not a character device: left alone",
                            f"{tmp_path}/fifo is a FIFO, not a character device: left alone",
                            f"{tmp_path}/link is a symbolic link, not a character device: left alone"]
    assert fix.changes == [] and (tmp_path / "file").stat().st_gid == 0


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_a_capability_entry_that_is_a_link_is_reported_and_its_target_untouched(tmp_path, monkeypatch):
    """/dev/nvidia-caps entries are never re-moded, but one that is a link is still a problem."""
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    proc = fake_proc(tmp_path, caps=True)
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    target = tmp_path / "target"
    target.write_text("")
    target.chmod(0o600)
    (dev / "nvidia-caps/nvidia-cap1").symlink_to(target)
    fix = new_fix()
    drv = nodes.create_missing(devices.driver_state(proc), fix, proc, str(dev), group=lambda: 44)
    devices.fix_access(world(), devices.expected_nodes(drv, proc, str(dev)), fix)
    assert fix.problems == [f"{dev}/nvidia-caps/nvidia-cap1 is a symbolic link, not a character device: left alone"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and (dev / "nvidia-caps/nvidia-cap1").is_symlink()
