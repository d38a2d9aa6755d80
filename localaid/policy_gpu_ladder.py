"""The recovery ladder of the GPU policy (policy_gpu.py says what asks for it and why): pure, no
I/O, time comes in as `now`.

    follow(config, obs, so, off, h, now, notes, fragment) -> fragment   the ladder under way
    start(obs, h, now, trigger, actions, notes, fragment) -> fragment   a new one, or reboot required
A ladder lives in the GPU history `h` (a dict the caller freezes) as h["ladder"]: phase
"requested" (the job "gpu-recover" asked for), "running", then "verify" (the models back on the
GPU?), None once it ended; a ladder given up on sets h["reboot_required"] and h["reboot_for"].
"""

from __future__ import annotations

from types import MappingProxyType

from localaid.records import EMPTY, OLLAMA, Action

LADDER_LIMIT = 2  # recovery ladders per boot (the history lives as long as the daemon; the job also counts)
LADDER_JOB = "gpu-recover"
LADDER_START_SLACK = 15.0  # a requested ladder job not seen running or finished by then: it did not start
WSL2 = "wsl2"  # GpuObs.platform (procfs.WSL2)
WSL_RESET = "the only reset under WSL2 is `wsl --shutdown` in Windows, then start WSL again"


def reboot_fragment(h) -> str:
    """Names the failure of the recovery that gave up (not an older one)."""
    why = h.get("reboot_for") or EMPTY
    xid = why.get("xid")
    if why.get("wsl"):
        return f"GPU {'lost' if why.get('lost') else 'failed'} (WSL2): {WSL_RESET}"
    if why.get("lost"):
        return f"GPU lost ({f'XID {xid}' if xid else 'XID 79 or NVML GPU_IS_LOST'}): reboot required"
    return f"GPU failed{f' (XID {xid})' if xid else ''}: reboot required"


def _give_up(h, now, gpu, run) -> None:
    """Reboot required: no more ladders. `run` is the ladder (or trigger) given up on."""
    h["reboot_required"] = now
    h["reboot_for"] = MappingProxyType({"lost": gpu.state == "lost" or run["cause"] == "gpu-lost",
                                        "xid": run.get("xid"), "wsl": gpu.platform == WSL2})


def _job_running(jo) -> bool:
    return jo is not None and jo.unit is not None and (
        jo.unit.job or jo.unit.active_state in ("activating", "deactivating"))


def follow(config, obs, so, off, h, now, notes, fragment) -> str:
    """The ladder under way: its job's progress, then the check that the models are back on the
    GPU (`off`: policy_gpu's evidence of one that is not). The status fragment."""
    ladder = h.get("ladder")
    if ladder is not None:
        ladder = dict(ladder)
        if ladder["phase"] in ("requested", "running"):
            ladder, fragment = _job_progress(obs, h, now, notes, ladder, fragment)
        if ladder is not None and ladder["phase"] == "verify":
            ladder, fragment = _verify(config, obs.gpu, so, off, h, now, notes, ladder, fragment)
    h["ladder"] = None if ladder is None else MappingProxyType(ladder)
    return fragment


def _job_progress(obs, h, now, notes, ladder, fragment):
    """A requested or running ladder after its job: running, starting (LADDER_START_SLACK), done
    (then "verify"), or failed, missing or leaving the GPU lost (reboot required, ladder None).
    (ladder, fragment)."""
    gpu, jo = obs.gpu, obs.jobs.get(LADDER_JOB)
    if _job_running(jo):
        ladder["phase"] = "running"
        return ladder, f"GPU recovery ({ladder['what']}): {jo.text or 'running'}"
    if jo is None or jo.unit is None or not jo.unit.exists:
        _give_up(h, now, gpu, ladder)
        notes.append("GPU recovery unavailable: localaid-gpu-recover.service is not installed")
        return None, fragment
    if ladder["phase"] == "requested" and now - ladder["started"] < LADDER_START_SLACK and \
            jo.progress_state != "failed" and jo.unit.active_state != "failed" and \
            jo.progress_state != "done":
        return ladder, f"GPU recovery ({ladder['what']}): starting"
    ok = jo.unit.active_state != "failed" and jo.progress_state == "done"
    if ok and gpu.state != "lost":
        ladder.update(phase="verify", verify_since=now)
        notes.append(f"GPU recovery ({ladder['what']}) done: checking the models are back on the GPU")
        return ladder, fragment
    why = "GPU still lost after the driver reload" if ok else jo.text or f"unit {jo.unit.active_state}"
    notes.append(f"GPU recovery ({ladder['what']}) failed: {why}; reboot required")
    _give_up(h, now, gpu, ladder)
    return None, fragment


def _verify(config, gpu, so, off, h, now, notes, ladder, fragment):
    """After the ladder's job: the models back on the GPU (or none to check) end it, recovered; the
    GPU lost again, or the models still off it after health.model_load_grace, end it in reboot
    required. (ladder, fragment)."""
    what = ladder["what"]
    if gpu.state == "lost":
        notes.append(f"GPU lost again after recovery ({what}): reboot required")
        _give_up(h, now, gpu, ladder)
        return None, fragment
    if gpu.state == "ok" and so is not None and so.models and not off:
        notes.append(f"GPU recovered ({what}) in {now - ladder['started']:.0f} s: models back on the GPU")
        h["recovered_at"] = now
        return None, fragment
    if gpu.state == "ok" and so is not None and so.models is not None and not so.models \
            and not any(m.keep_warm for m in config.ollama.models):
        notes.append(f"GPU recovered ({what}): GPU usable, no model to check")
        h["recovered_at"] = now
        return None, fragment
    if now - ladder["verify_since"] > config.health.model_load_grace:
        notes.append(f"after GPU recovery ({what}) the models are still not on the GPU: reboot required")
        _give_up(h, now, gpu, ladder)
        return None, fragment
    return ladder, f"GPU recovery ({what}): waiting for the models to load on the GPU"


def start(obs, h, now, trigger, actions, notes, fragment) -> str:
    """What asks for the ladder, (cause, evidence, xid), or an Xid kept through a maintenance,
    starts it when none runs and no reboot is required; it waits out a maintenance of Ollama,
    under WSL2 names the only reset, adopts a ladder job already running, and after LADDER_LIMIT
    per boot requires a reboot. The status fragment."""
    gpu, jo = obs.gpu, obs.jobs.get(LADDER_JOB)
    attempts = tuple(h.get("ladder_attempts", ()))
    if trigger is None and h.get("pending") is not None:
        trigger = tuple(h["pending"])
    h["pending"] = None
    if trigger is not None and h.get("ladder") is None and not h.get("reboot_required"):
        cause, evidence, xid = trigger
        what = f"XID {xid}" if cause == "xid" else {"gpu-lost": "GPU lost", "resume": "after resume"}[cause]
        run = {"what": what, "cause": cause, "xid": xid}
        if OLLAMA in obs.maintenance and not _job_running(jo):
            h["pending"] = trigger  # an Xid comes once: remember it until the upgrade is over
            fragment = f"GPU recovery ({what}) waits: ollama under maintenance"
        elif gpu.platform == WSL2:  # nothing to reload from inside the VM
            notes.append(f"GPU: {evidence}; no recovery ladder: {WSL_RESET}")
            _give_up(h, now, gpu, run)
        elif _job_running(jo):  # a ladder we did not start (or from before a restart of localaid)
            h["ladder"] = MappingProxyType({"phase": "running", "started": now, **run})
            fragment = f"GPU recovery ({what}): {jo.text or 'running'}"
        elif len(attempts) >= LADDER_LIMIT:
            notes.append(f"GPU: {evidence}; {len(attempts)} recoveries already tried this boot: reboot required")
            _give_up(h, now, gpu, run)
        else:
            attempts += (now,)
            actions.append(Action("start-job", LADDER_JOB, cause, evidence, service=OLLAMA))
            h["ladder"] = MappingProxyType({"phase": "requested", "started": now, **run})
            fragment = f"GPU recovery ({what}): starting"
    h["ladder_attempts"] = attempts
    return fragment
