"""The GPU recovery ladder (`localaid gpu recover`, localaid-gpu-recover.service).

    stop ollama → reload nvidia_uvm → recreate nodes → check the GPU → start ollama

A step journal (/run/localaid/gpu-recover.steps.json, job.Journal) records each step before it
is taken. A step that fails rolls back, which here means starting Ollama again: the CPU is better
than nothing. A kill (a timeout, SIGKILL) leaves the journal behind, and the next run of the
ladder, or of `localaid provision devices` (boot, driver loads, every start of Ollama, and the
unit's ExecStopPost after a kill), completes it, so Ollama is never left stopped. Every step can
be redone: stopping a stopped unit, loading a loaded module and fixing fixed nodes change nothing.
At most LADDER_LIMIT ladders run per boot (the daemon counts too, in case it restarted).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from localaid import fsutil, paths
from localaid.adapters.systemd import SystemdError
from localaid.procfs import PROC, _read, driver_state, uvm_loaded
from localaid.provision.devices.access import ensure
from localaid.provision.devices.nodes import DEV, Fix
from localaid.provision.host import Host
from localaid.provision.job import ROLLBACK, Hook, JobError, Journal, Lock, Maintenance, Reporter, Step, drive, resume
from localaid.records import OLLAMA, UNITS

LADDER_JOB = "gpu-recover"
LADDER_LIMIT = 2  # ladders per boot
STOP_TIMEOUT, START_TIMEOUT = 90, 60
STEPS = ("stop ollama", "reload nvidia_uvm", "recreate nodes", "check the GPU", "start ollama")


def _run_file(name: str) -> str:
    return os.path.join(paths.RUN_DIR, name)


def attempts_path() -> str:
    return _run_file("gpu-recover.json")  # {"boot_id", "attempts"}


def journal_path() -> str:
    return _run_file("gpu-recover.steps.json")


class GpuHost(Host):
    """The machine plus the GPU as NVML reports it. `systemd`: a given manager connection."""

    def __init__(self, systemd=None, systemd_timeout: float = 30):
        super().__init__(systemd_timeout)
        self._given_sd = systemd

    @property
    def sd(self):
        return self._given_sd if self._given_sd is not None else super().sd

    def gpu(self, config):
        from localaid.adapters.gpu import observe_once
        return observe_once(config)


class Ladder:
    """The steps and their rollback. wait=False: a start of Ollama is queued, not waited for
    (run by localaid-devices.service, which Ollama's start waits for)."""

    def __init__(self, config, host: GpuHost, rep: Reporter, proc: str = PROC, dev: str = DEV, wait: bool = True):
        self.config, self.host, self.rep, self.proc, self.dev, self.wait = config, host, rep, proc, dev, wait
        self.unit = UNITS[OLLAMA]
        self.maintenance = Maintenance(OLLAMA)
        self.current, self.since = "", 0.0
        self.reason: str | None = None  # why the ladder rolled back
        self.start_tried = False
        self.steps = [Step(STEPS[0], self.stop), Step(STEPS[1], self.reload), Step(STEPS[2], self.nodes),
                      Step(STEPS[3], self.check), Step(STEPS[4], self.start, undo=False)]

    def _begin(self, text: str, j: dict) -> None:
        done = next((i for i, s in enumerate(STEPS) if s == j.get("step")), len(STEPS))
        self.rep.say(f"GPU recovery: {text}", attempt=j.get("attempt"))
        self.rep.progress("running", text, done / (len(STEPS) + 1), force=True)
        self.current, self.since = text, self.host.monotonic()

    def _outcome(self, text: str, ok: bool = True) -> None:
        took = f"{self.host.monotonic() - self.since:.1f}s"
        if ok:
            self.rep.say(f"GPU recovery: {self.current}: {text}", took=took)
        else:
            self.rep.warn(f"{self.current}: {text}", took=took)

    # ---- the steps
    def stop(self, j: dict) -> None:
        self._begin("stopping ollama", j)
        try:
            self.host.stop(self.unit, STOP_TIMEOUT)
        except SystemdError as e:
            raise JobError(f"cannot stop {self.unit}: {e}") from None
        except JobError as e:
            raise JobError(f"{e}: nvidia_uvm cannot be reloaded under it") from None
        self._outcome(f"stopped ({self.host.unit_state(self.unit).active_state})")

    def reload(self, j: dict) -> dict:
        self._begin("reloading nvidia_uvm", j)
        drv = driver_state(self.proc)
        if not drv.loaded:
            raise JobError("NVIDIA driver not loaded")
        # modprobe rather than rmmod: it resolves the alias to Debian's nvidia-current-uvm too.
        unloaded = True
        if uvm_loaded(drv):
            r = self.host.run(["modprobe", "-r", "nvidia-uvm"], timeout=60)
            unloaded = r.ok
            if not unloaded:  # still in use by another CUDA program: load anyway, it may be enough
                self._outcome(f"not unloaded (modprobe -r exit {r.rc}: {r.last[-200:] or 'in use?'}); "
                              "loading anyway", ok=False)
        r = self.host.run(["modprobe", "nvidia-uvm"], timeout=60)
        if not r.ok:
            raise JobError(f"modprobe nvidia-uvm failed: {r.last[-200:] or f'exit {r.rc}'}", r.tail)
        self._outcome("nvidia_uvm reloaded" if unloaded else "nvidia_uvm loaded (it was never unloaded)")
        return {"unloaded": unloaded}

    def nodes(self, j: dict) -> None:
        if self.config.gpu.devices.mode == "off":
            return
        self._begin("recreating device nodes", j)
        fix = ensure(self.config, Fix(self.rep, self.host), self.proc, self.dev)
        if fix.problems:
            raise JobError("; ".join(fix.problems))
        self._outcome(f"{len(fix.changes)} change(s)" if fix.changes else "nothing to change")

    def check(self, j: dict) -> None:
        obs = self.host.gpu(self.config)
        if obs.state == "lost":
            raise JobError("GPU still lost after reloading nvidia_uvm: reboot required")
        if obs.state != "ok":
            raise JobError(f"GPU not usable after reloading nvidia_uvm: {obs.error or obs.state}")

    def start(self, j: dict) -> None:
        """Also the rollback: after a failure Ollama serves from the CPU."""
        self.start_tried = True
        self.maintenance.off()
        self._begin("starting ollama", j)
        try:
            self.host.start(self.unit)
            state = self.host.wait_state(self.unit, ("active", "failed", "inactive"), START_TIMEOUT) \
                if self.wait else "queued"
        except (SystemdError, JobError) as e:
            self._outcome(f"failed: {e}", ok=False)
            raise JobError(f"cannot start {self.unit}: {e}") from None
        self._outcome(state, ok=state in ("active", "queued"))
        if state not in ("active", "queued"):
            raise JobError(f"{self.unit} is {state} after the restart")

    def rollback(self, j: dict) -> None:
        self.reason = j.get("reason") or self.reason
        self.start(j)

    # ---- one run
    def finish(self, run: Callable[[], tuple[str, dict]], journal: Journal) -> int:
        """Run the ladder (or what is left of it) and report how it ended."""
        try:
            how, j = run()
            failure = (j.get("reason") or "rolled back") if how == "rolled back" else None
        except (JobError, OSError) as e:
            failure = self.reason or str(e)
            j = {}
            if not self.start_tried:  # ended before any step could (a journal we cannot follow)
                journal.clear()
                try:
                    self.start({})
                except JobError:
                    pass
        finally:
            self.maintenance.off()
        if failure:
            self.rep.failed(failure)
            return 1
        took = self.host.monotonic() - j.get("started", self.host.monotonic())
        text = (f"GPU recovered in {took:.1f} s: nvidia_uvm {'reloaded' if j.get('unloaded', True) else 'loaded'}, "
                "ollama restarted")
        self.rep.done(text, attempt=j.get("attempt"))
        return 0


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id").strip()


def _ladder(ladder: Ladder, hook: Hook | None, fresh: bool) -> int | None:
    journal = Journal(journal_path())
    left = journal.read()
    if left is not None:
        ladder.rep.say("GPU recovery: completing the ladder a killed run left", step=left["step"])
        if left["step"] != ROLLBACK:
            ladder.maintenance.on()
        return ladder.finish(lambda: resume(journal, ladder.steps, ladder.rollback, hook), journal)
    if not fresh:
        return None
    boot = _boot_id()
    record = fsutil.read_json(attempts_path())
    if not (isinstance(record, dict) and record.get("boot_id") == boot and isinstance(record.get("attempts"), int)):
        record = {"boot_id": boot, "attempts": 0}
    if record["attempts"] >= LADDER_LIMIT:
        ladder.rep.failed(f"GPU recovery already tried {record['attempts']} times since boot: reboot required")
        return 1
    record["attempts"] += 1
    os.makedirs(paths.RUN_DIR, mode=0o755, exist_ok=True)
    fsutil.write_json(attempts_path(), record)
    ladder.maintenance.on()
    j = journal.advance({"attempt": record["attempts"], "started": ladder.host.monotonic()}, STEPS[0])
    return ladder.finish(lambda: ("done", drive(journal, j, ladder.steps, ladder.rollback, hook)), journal)


def recover(config, host: GpuHost, rep: Reporter, hook: Hook | None = None, proc: str = PROC,
            dev: str = DEV) -> int:
    """One ladder; exit status 0 when the GPU answers NVML afterwards and Ollama runs. A ladder a
    killed run left is completed instead (and its outcome reported)."""
    with Lock(_run_file("gpu-recover.lock"), "GPU recovery", wait=True, rep=rep):
        return _ladder(Ladder(config, host, rep, proc, dev), hook, fresh=True)


def complete_killed(config, host: GpuHost, hook: Hook | None = None, proc: str = PROC,
                    dev: str = DEV) -> int | None:
    """What `localaid provision devices` runs first: the rest of a ladder a kill interrupted
    (None when there is none, or a live ladder is still at work)."""
    if Journal(journal_path()).read() is None:
        return None
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(Lock(_run_file("gpu-recover.lock"), "GPU recovery", wait=False))
        except JobError:  # a ladder is running: it finishes its own steps
            return None
        return _ladder(Ladder(config, host, Reporter(LADDER_JOB), proc, dev, wait=False), hook, fresh=False)
