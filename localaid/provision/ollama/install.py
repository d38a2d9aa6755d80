"""Installing or upgrading Ollama through its script, as journaled steps.

    obtain     preflight, get and check the script                       a failure just ends
    snapshot   hard-link copy of the binary and libraries                killed: rolled back
    run        the script, with OLLAMA_VERSION when a version is wanted  killed: rolled back
    configure  models dir, drop-in, enable, (re)start, wait, version     killed: redone
    commit     the snapshot is no longer needed: dropped                 killed: redone
    pull       the configured models (provisioning only)                 killed: redone

Each step is recorded in /var/lib/localaid/ollama-install.json before it is taken (job.drive).
A failure from snapshot to configure rolls back: the snapshot is put back and the previous
Ollama started. A kill (SIGKILL, a stopped unit, a power cut) is found by the next run's
resume(): half-run script → rolled back; later → completed. The snapshot only goes in commit,
after the new Ollama answered, or by being put back: never while the journal may need it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

from localaid.provision.host import SAFE_PATH, Host
from localaid.provision.job import ROLLBACK, Hook, JobError, Journal, Maintenance, Reporter, Step, drive, resume
from localaid.provision.ollama.dropin import write_dropin
from localaid.provision.ollama.layout import LAYOUT, Layout
from localaid.provision.ollama.models import pull_models
from localaid.provision.ollama.script import obtain_script
from localaid.provision.ollama.service import (
    configure_service, models_dir_ready, models_dir_step, preflight)
from localaid.records import OLLAMA

# lspci and lshw, as the script sees them: silent, so it finds no GPU to install drivers for.
# With nvidia-smi present it stops before looking; without, it would add NVIDIA's apt repository
# and install cuda-drivers and kernel headers (shared/research/ollama-install-script.md), which
# is not an installer's business on a host localaid runs (and meets dpkg's lock during apt).
NO_GPU_PROBE = "#!/bin/sh\n# localaid: no GPU probing by Ollama's install script (no driver installs)\nexit 0\n"


# ------------------------------------------------------------------------------------ snapshot
class Snapshot:
    """Hard links of the binary and the library directory, taken before the script runs. The
    script removes the library directory and unpacks new files (new inodes), so the links keep
    the old release intact at the cost of a few directory entries.

    It is built in <root>.partial and renamed to <root> when whole: <root> exists only complete.
    take() never replaces an existing <root> (a rollback that failed left it: the last copy known
    to be good); restore() is safe to repeat after a kill half-way."""

    def __init__(self, root: str = LAYOUT.backup, binary: str = LAYOUT.bin, lib: str = LAYOUT.lib):
        self.root, self.binary, self.lib = root, binary, lib
        self.partial = root + ".partial"

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def take(self) -> str | None:
        """"taken", "kept" (an earlier complete one) or None (no Ollama to copy)."""
        self.discard_partial()
        if self.exists:
            return "kept"
        if not os.path.lexists(self.binary):
            return None
        os.makedirs(self.partial, mode=0o700)
        _link_or_copy(self.binary, os.path.join(self.partial, "ollama"))
        if os.path.isdir(self.lib):
            shutil.copytree(self.lib, os.path.join(self.partial, "lib"), symlinks=True, copy_function=_link_or_copy)
        os.rename(self.partial, self.root)
        return "taken"

    def restore(self) -> bool:
        if not self.exists:
            return False
        saved_bin, saved_lib = os.path.join(self.root, "ollama"), os.path.join(self.root, "lib")
        if os.path.lexists(saved_bin):
            tmp = self.binary + ".localaid-restore"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            _link_or_copy(saved_bin, tmp)
            os.replace(tmp, self.binary)
        if os.path.isdir(saved_lib):
            if os.path.isdir(self.lib) and not os.path.islink(self.lib):
                shutil.rmtree(self.lib)
            elif os.path.lexists(self.lib):
                os.unlink(self.lib)
            os.rename(saved_lib, self.lib)
        shutil.rmtree(self.root, ignore_errors=True)
        return True

    def discard_partial(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def discard(self) -> None:
        self.discard_partial()
        shutil.rmtree(self.root, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst, follow_symlinks=False)


# ---------------------------------------------------------------------------------- the script
def run_script(script: bytes, version: str | None, timeout: float, rep: Reporter,
               host: Host | None = None) -> tuple[int, str]:
    """Run the installer as root; (exit status, one-line reason). Output goes to `rep` line by line.
    The bytes run are the bytes checked: written whole to a private file first."""
    with tempfile.TemporaryDirectory(prefix="localaid-ollama-") as d:
        path, shims = os.path.join(d, "install.sh"), os.path.join(d, "bin")
        with open(path, "wb") as f:
            f.write(script)
        os.mkdir(shims, 0o755)
        for name in ("lspci", "lshw"):
            shim = os.path.join(shims, name)
            with open(shim, "w") as f:
                f.write(NO_GPU_PROBE)
            os.chmod(shim, 0o755)
        env = {"PATH": shims + ":" + SAFE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
               "USER": "root", "LOGNAME": "root"}
        if version:
            env["OLLAMA_VERSION"] = version
        r = (host or Host()).run(["sh", path], timeout=timeout, env=env, on_line=lambda t: rep.line(t, "installer"))
    if r.timed_out:
        return r.rc, f"install script did not finish within {timeout:g} s and was stopped"
    if r.rc != 0:
        return r.rc, f"install script exited with status {r.rc}"
    return 0, "install script finished"


# ------------------------------------------------------------------------------------- the job
class Install:
    """One install or upgrade of Ollama through its script (see the module docstring)."""

    def __init__(self, cfg, rep: Reporter, host: Host, layout: Layout = LAYOUT, ready_timeout: float = 60.0,
                 hook: Hook | None = None, models: tuple | None = None):
        self.cfg, self.rep, self.host, self.layout = cfg, rep, host, layout
        self.models = cfg.models if models is None else models  # Config.wanted_models
        self.ready_timeout, self.hook = ready_timeout, hook
        self.journal = Journal(layout.journal)
        self.snap = Snapshot(layout.backup, layout.bin, layout.lib)
        self.maint = Maintenance(OLLAMA, layout.maintenance_dir)
        self.script: bytes | None = None
        self.outcome: str | None = None  # what the rollback did, said instead of "rolled back"

    def steps(self, pull: bool) -> list[Step]:
        steps = [Step("obtain", self._obtain, undo=False),
                 Step("snapshot", self._snapshot, resume=ROLLBACK),
                 Step("run", self._run, resume=ROLLBACK),
                 Step("configure", self._configure),
                 Step("commit", self._commit, undo=False)]
        return steps + [Step("pull", self._pull, undo=False)] if pull else steps

    # ---- entry points
    def install(self, want: str | None, before: str | None, pull: bool) -> dict:
        """Run all steps; the final record (version, failures). Raises JobError."""
        os.makedirs(os.path.dirname(self.layout.journal), mode=0o755, exist_ok=True)
        j = {"step": "obtain", "want": want, "before": before, "pull": pull}
        self.journal.write(j)
        return self._said(lambda: drive(self.journal, j, self.steps(pull), self.rollback, self.hook))

    def resume(self) -> str | None:
        """Finish what a killed run left: None when nothing was left, else what was done."""
        j = self.journal.read()
        if j is None:
            return None
        self.rep.warn(f"an earlier Ollama install was interrupted at its step {j['step']}: finishing it")
        outcome, _ = self._said(lambda: resume(self.journal, self.steps(bool(j.get("pull"))), self.rollback,
                                               self.hook))
        text = f"interrupted Ollama install {'completed' if outcome == 'done' else 'rolled back'}"
        if outcome != "done" and self.outcome:
            text += f" ({self.outcome})"
        self.rep.step(text)
        return text

    def _said(self, fn):
        self.outcome = None
        try:
            return fn()
        except JobError as e:
            if self.outcome:
                raise JobError(self.outcome, e.tail) from None
            raise

    # ---- steps
    def _obtain(self, j: dict) -> None:
        problems = preflight(self.cfg.models_dir, self.host)
        if problems:
            raise JobError("cannot install Ollama: " + "; ".join(problems))
        budget = min(self.cfg.install_timeout / 3, 600.0)
        self.script = obtain_script(self.cfg, self.rep, budget, sleep=self.host.sleep, clock=self.host.monotonic)

    def _snapshot(self, j: dict) -> dict:
        self.maint.on()
        kept = self.snap.take()
        if kept == "taken":
            self.rep.step(f"kept a copy of Ollama {j.get('before') or '(unknown version)'} to restore if the "
                          "install fails")
        elif kept == "kept":
            self.rep.step(f"kept the copy of Ollama an earlier run left at {self.snap.root}: it is restored if "
                          "the install fails")
        return {"snapshot": bool(kept)}

    def _run(self, j: dict) -> dict:
        self.maint.on()
        if self.script is None:  # (a kill here is rolled back, never redone: cannot happen)
            raise JobError("the install script is not at hand")
        self.rep.step(f"running the install script for Ollama {j.get('want') or 'the newest release'}")
        if models_dir_ready(self.cfg.models_dir) and write_dropin(self.cfg, self.layout):
            self.rep.step(f"wrote {self.layout.dropin}")
        started = self.host.monotonic()
        rc, why = run_script(self.script, j.get("want"), self.cfg.install_timeout, self.rep, self.host)
        if rc != 0:
            raise JobError(why, tuple(self.rep.tail))
        return {"script_started": started}

    def _configure(self, j: dict) -> dict:
        self.maint.on()
        models_dir_step(self.cfg, self.rep, self.host)
        version = configure_service(self.cfg, self.host, self.rep, restart=True, timeout=self.ready_timeout,
                                    fresh_since=j.get("script_started"), layout=self.layout)
        # The service now runs the new binary: its answer is the installed version.
        want = j.get("want")
        if want and version != want:
            raise JobError(f"the install script left Ollama {version} running, not the requested {want}")
        return {"version": version}

    def _commit(self, j: dict) -> None:
        self.snap.discard()
        self.maint.off()

    def _pull(self, j: dict) -> dict:
        return {"failures": pull_models(self.cfg, self.rep, self.models)}

    # ---- rollback
    def rollback(self, j: dict) -> None:
        """Put the previous Ollama back and running (when the script may have changed it)."""
        reason, failed = j.get("reason") or "interrupted", j.get("failed_step")
        self.maint.on()
        try:
            if failed in ("obtain", "snapshot"):
                self.snap.discard_partial()  # Ollama itself was not touched yet
                self.outcome = f"{reason}; Ollama was not changed"
            elif not self.snap.exists:
                self.outcome = reason  # a first install: nothing to put back
            else:
                self.rep.warn(f"{reason}; putting Ollama {j.get('before') or '(previous)'} back")
                self.snap.restore()
                try:
                    version = configure_service(self.cfg, self.host, self.rep, restart=True,
                                                timeout=self.ready_timeout, layout=self.layout)
                except JobError as e:
                    raise JobError(f"the previous Ollama was put back but does not run: {e}") from None
                self.outcome = f"{reason}; previous Ollama {version} restored and running"
        finally:
            self.maint.off()
