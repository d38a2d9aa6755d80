"""The GPU recovery ladder (localaid/provision/devices/ladder.py) and the node pass survive a
real kill: a forked child runs them and dies by os._exit at a chosen step (no finally, no
atexit, as with SIGKILL); the next run, in the parent, must complete the work.

What they touch is real but small: a fake /proc (tests.unit.test_devices.fake_proc), a /dev in
a temporary directory (mknod: root only), tests/fakes/bin/fake-kmod as modprobe, journal and
progress files under a temporary /run/localaid. systemd is a file of unit states, so that what
the child stopped is what the parent sees; NVML is a stand-in that says "ok" or "lost".
"""

from __future__ import annotations

import io
import itertools
import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from localaid import log, paths
from localaid.adapters import gpu as gpu_mod
from localaid.adapters import systemd as systemd_mod
from localaid.config import Config
from localaid.provision import devices
from localaid.provision.devices import access, ladder
from localaid.provision.job import ROLLBACK, Reporter
from localaid.records import GpuObs, UnitState
from tests.unit.test_devices import fake_proc

KMOD = Path(__file__).resolve().parents[1] / "fakes/bin/fake-kmod"
OLLAMA = "ollama.service"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


class FileSystemd:
    """Unit states in a JSON file: a forked child's stop or start is what the parent sees."""

    def __init__(self, path: Path):
        self.path = path

    def _states(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def _set(self, name: str, state: str) -> None:
        self.path.write_text(json.dumps(dict(self._states(), **{name: state})))

    def state(self, name):
        return UnitState(name, "loaded", self._states().get(name, "inactive"))

    def start(self, name, mode="replace"):
        self._set(name, "active")

    def stop(self, name, mode="replace"):
        self._set(name, "inactive")

    def reset_failed(self, name):
        pass


class Box:
    """One machine: driver loaded with nvidia_uvm, two good nodes, the uvm nodes missing."""

    def __init__(self, tmp_path: Path, monkeypatch):
        self.tmp = tmp_path
        run = tmp_path / "run"
        for name, value in (("RUN_DIR", run), ("PROGRESS_DIR", run / "progress"),
                            ("MAINTENANCE_DIR", run / "maintenance")):
            monkeypatch.setattr(paths, name, str(value))
        monkeypatch.setattr(log, "stream", io.StringIO())
        self.proc = fake_proc(tmp_path)
        self.dev = tmp_path / "dev"
        self.dev.mkdir()
        for name, minor in (("nvidiactl", 255), ("nvidia0", 0)):
            os.mknod(self.dev / name, stat.S_IFCHR | 0o666, os.makedev(195, minor))
            os.chmod(self.dev / name, 0o666)
        bin_ = tmp_path / "bin"  # modprobe only: no nvidia-modprobe (it would write the real /dev)
        bin_.mkdir()
        (bin_ / "modprobe").symlink_to(KMOD)
        monkeypatch.setenv("PATH", str(bin_))
        monkeypatch.setenv("LOCALAID_PROC", self.proc)
        monkeypatch.setenv("FAKE_KMOD_LOG", str(tmp_path / "kmod.log"))
        monkeypatch.setattr(access, "service_users", lambda config: ["localaid-test-nobody"])
        self.sd = FileSystemd(tmp_path / "units.json")
        self.sd.start(OLLAMA)
        monkeypatch.setattr(systemd_mod, "Systemd", lambda timeout=5.0: self.sd)
        self.gpu = "ok"
        box = self

        class Nvml:
            def __init__(self, config, events=True):
                pass

            def observe(self):
                return GpuObs(state=box.gpu, error="GPU is lost" if box.gpu == "lost" else None)

            def close(self):
                pass
        monkeypatch.setattr(gpu_mod, "Gpu", Nvml)

    def ladder(self, hook=None) -> int:
        return ladder.recover(Config(), ladder.GpuHost(), Reporter(ladder.LADDER_JOB, terminal=False), hook,
                              self.proc, str(self.dev))

    def complete_killed(self) -> int | None:
        return ladder.complete_killed(Config(), ladder.GpuHost(), proc=self.proc, dev=str(self.dev))

    def killed_at(self, step: str) -> int:
        """Exit status of a child that runs the ladder and dies just before `step`."""
        def hook(name):
            if name == step:
                os._exit(137)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 2 if self.ladder(hook) == 0 else 3
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def journal(self) -> dict | None:
        path = Path(ladder.journal_path())
        return json.loads(path.read_text()) if path.exists() else None

    def ollama(self) -> str:
        return self.sd.state(OLLAMA).active_state

    def kmod(self) -> list[str]:
        path = self.tmp / "kmod.log"
        return path.read_text().splitlines() if path.exists() else []

    def progress(self) -> dict:
        return json.loads((Path(paths.PROGRESS_DIR) / "gpu-recover.json").read_text())

    def nodes(self) -> dict[str, str]:
        return {p.name: f"{stat.filemode(p.lstat().st_mode)} {p.lstat().st_gid}" for p in sorted(self.dev.iterdir())}


@pytest.fixture
def box(tmp_path, monkeypatch):
    return Box(tmp_path, monkeypatch)


HEALED = {"nvidia-uvm": "crw-rw---- 44", "nvidia-uvm-tools": "crw-rw---- 44",
          "nvidia0": "crw-rw-rw- 0", "nvidiactl": "crw-rw-rw- 0"}


def test_the_ladder_runs_its_steps_in_order(box):
    assert box.ladder() == 0
    assert box.ollama() == "active" and box.journal() is None
    assert box.kmod() == ["modprobe -r nvidia-uvm", "modprobe nvidia-uvm"]
    assert box.nodes() == HEALED
    assert box.progress()["state"] == "done" and box.progress()["text"].startswith("GPU recovered in")
    out = log.stream.getvalue()
    said = [out.index(f"GPU recovery: {s}") for s in ("stopping ollama", "reloading nvidia_uvm",
                                                       "recreating device nodes", "starting ollama")]
    assert said == sorted(said)
    assert not os.listdir(paths.MAINTENANCE_DIR)


@pytest.mark.parametrize("then", ["ladder", "provision devices"])
@pytest.mark.parametrize("step", ladder.STEPS)
def test_a_ladder_killed_at_any_step_is_completed_by_the_next_run(box, step, then):
    assert box.killed_at(step) == 137
    assert box.journal()["step"] == step  # recorded before it was taken
    assert box.ollama() == ("active" if step == ladder.STEPS[0] else "inactive")
    assert os.listdir(paths.MAINTENANCE_DIR) == ["ollama"]  # left behind with a dead PID
    if then == "ladder":
        assert box.ladder() == 0
    else:
        assert box.complete_killed() == 0
    assert box.ollama() == "active" and box.journal() is None
    assert not os.listdir(paths.MAINTENANCE_DIR)
    assert box.kmod()[-1] == "modprobe nvidia-uvm" and box.nodes() == HEALED
    assert box.progress()["state"] == "done"
    assert f'completing the ladder a killed run left step="{step}"' in log.stream.getvalue()


@pytest.mark.parametrize("then", ["ladder", "provision devices"])
def test_a_ladder_killed_while_rolling_back_starts_ollama_next_time(box, then):
    box.gpu = "lost"
    assert box.killed_at(ROLLBACK) == 137
    assert box.ollama() == "inactive" and box.journal()["step"] == ROLLBACK
    assert (box.ladder() if then == "ladder" else box.complete_killed()) == 1  # the GPU stayed lost
    assert box.ollama() == "active" and box.journal() is None
    assert box.progress()["state"] == "failed"
    assert box.progress()["text"] == "GPU still lost after reloading nvidia_uvm: reboot required"


def test_a_failed_ladder_still_starts_ollama_and_says_why(box):
    box.gpu = "lost"
    assert box.ladder() == 1
    assert box.ollama() == "active" and box.journal() is None
    assert box.progress()["text"] == "GPU still lost after reloading nvidia_uvm: reboot required"


def test_the_per_boot_limit_never_stops_a_ladder_from_being_completed(box):
    assert box.ladder() == 0
    assert box.killed_at("check the GPU") == 137  # the second (last) ladder of this boot
    assert box.ladder() == 0  # completes the killed one
    assert box.ollama() == "active"
    assert box.ladder() == 1  # a third one is refused, and Ollama left alone
    assert box.progress()["text"] == "GPU recovery already tried 2 times since boot: reboot required"
    assert box.ollama() == "active" and box.kmod().count("modprobe nvidia-uvm") == 2


def test_nothing_left_nothing_done_by_provision_devices(box):
    assert box.complete_killed() is None
    assert box.kmod() == [] and box.ollama() == "active"


def test_a_running_ladder_is_left_to_itself(box):
    """The ladder's own start of Ollama starts localaid-devices.service (Ollama Wants it): that
    run must neither wait for the ladder nor take over its steps."""
    seen = []

    def hook(name):
        if name == "start ollama":
            seen.append(box.complete_killed())
    assert box.ladder(hook) == 0
    assert seen == [None] and box.ollama() == "active"


def test_provision_devices_completes_a_killed_ladder_first(box, monkeypatch):
    called = []
    monkeypatch.setattr(devices, "complete_killed", lambda config, host: called.append("ladder"))
    monkeypatch.setattr(devices, "ensure", lambda config, fix: called.append("nodes") or fix)
    assert devices.devices_main(SimpleNamespace(), Config()) == 0
    off = replace(Config(), gpu=replace(Config().gpu, devices=replace(Config().gpu.devices, mode="off")))
    assert devices.devices_main(SimpleNamespace(), off) == 0  # even with the nodes left alone
    assert called == ["ladder", "nodes", "ladder"]


# ------------------------------------------------------------------------------ the node pass
def group_mode():
    return replace(Config(), gpu=replace(Config().gpu, devices=replace(Config().gpu.devices, mode="group")))


def fresh_dev(base: Path) -> Path:
    dev = base / "dev"
    dev.mkdir(parents=True)
    for name, minor in (("nvidiactl", 255), ("nvidia0", 0)):
        os.mknod(dev / name, stat.S_IFCHR | 0o600, os.makedev(195, minor))
    return dev


def node_state(dev: Path) -> dict:
    return {p.name: (stat.filemode(p.lstat().st_mode), p.lstat().st_uid, p.lstat().st_gid, p.lstat().st_rdev)
            for p in sorted(dev.iterdir())}


def test_a_node_pass_killed_anywhere_is_completed_by_the_next(box, monkeypatch):
    """Mode group on root-only nodes with nvidia-uvm's missing: modprobe.d, two mknods, four
    re-owned nodes, the record. A kill before any of them, then a plain rerun: the same end."""
    conf = box.tmp / "modprobe.d/localaid-nvidia.conf"
    monkeypatch.setattr(access, "MODPROBE_CONF", str(conf))

    def run(dev, hook=None):
        return devices.ensure(group_mode(), devices.Fix(Reporter(None, terminal=False), hook=hook), box.proc, str(dev))

    ref = run(fresh_dev(box.tmp / "reference"))
    assert not ref.problems and len(ref.changes) == 5  # the uvm nodes are made right at once
    want = node_state(box.tmp / "reference/dev")
    assert {m for m, *_ in want.values()} == {"crw-rw----"}
    for k in itertools.count():
        base = box.tmp / f"kill{k}"
        dev = fresh_dev(base)
        conf.unlink(missing_ok=True)
        calls = iter(range(k + 1))

        def hook(label):
            if next(calls) == k:
                os._exit(137)
        pid = os.fork()
        if pid == 0:
            try:
                run(dev, hook)
            finally:
                os._exit(0)
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0:
            break  # k is past the last change: every point was tried
        again = run(dev)
        assert not again.problems and node_state(dev) == want, k
        assert "NVreg_DeviceFileMode=0660" in conf.read_text()
        assert json.loads(Path(paths.RUN_DIR, "devices.json").read_text())["mode"] == "group"
    assert k == 8  # modprobe.d, mknod ×2, set ×4, marker
