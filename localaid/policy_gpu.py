"""The GPU part of the policy: pure, like policy.py (no I/O, time comes in as `now`).

    decide_gpu(config, observation, gpu_history, now) -> (actions, gpu_history, status fragment, notes)
    warm(config, observation, history, ollama_state, now) -> (preloads, attempts, process)
Heals what leaves Ollama on the CPU or the GPU unusable:
- boot race: Ollama discovers GPUs once, at start. If the device nodes appeared or were fixed
  (localaid-devices.service records when) after Ollama started, restart it once.
- CPU fallback: a loaded model not fully in VRAM while the GPU has room for it (after Ollama's own
  reserve), or, for PID_MISS_AFTER, Ollama's runner gone from the GPU while /api/ps still lists its
  models in VRAM (its CUDA context died: no longer a compute process, or the GPU's memory freed):
  restart Ollama (the supervisor then preloads the configured models). A partial offload of a
  model that does not fit is Ollama's choice, never a fallback. After FALLBACK_RESTARTS restarts
  within FALLBACK_WINDOW that did not help (one that did clears the count), no more until
  something changes: Ollama started anew by someone else, the GPU's state, or the configuration.
- GPU lost, a critical Xid, or a GPU left unusable by suspend/resume (within RESUME_WINDOW of the
  resume: an NVML error ERROR_CYCLES cycles in a row, or a CPU fallback): the recovery ladder, the
  job "gpu-recover" (localaid-gpu-recover.service: stop ollama, reload nvidia_uvm, recreate the
  device nodes, start ollama), then a check that the models are back on the GPU. At most
  LADDER_LIMIT ladders per boot; a ladder that fails, or a GPU still lost after it, ends in
  "reboot required" and no further attempt (the ladder's steps: policy_gpu_ladder.py).
Under WSL2 (gpu.platform) no driver can be reloaded from Linux: the only reset is `wsl --shutdown`
from Windows. What would start the ladder says so instead (once, and in STATUS until the GPU is
usable again); CPU-fallback restarts of Ollama work there as anywhere.
Nothing here restarts an Ollama the admin stopped (unit inactive) or one under maintenance.
"""

from __future__ import annotations

from types import MappingProxyType

from localaid import driver_support
from localaid import policy_gpu_ladder as ladder
from localaid.policy_gpu_ladder import LADDER_LIMIT, LADDER_START_SLACK, WSL2  # noqa: F401 (named here too)
from localaid.records import NO_DRIVER, OLLAMA, UNITS, Action, Observation

FALLBACK_RESTARTS = 2
FALLBACK_WINDOW = 3600.0
RESTART_SLACK = 15.0  # a fallback restart not seen (ollama's start time older) by then did not happen
RESUME_WINDOW = 120.0  # after a resume, an unusable GPU or a CPU fallback goes straight to the ladder
PID_MISS_AFTER = 30.0  # a loaded model whose runner is not a GPU compute process for this long
RUNNER_GONE_SHARE = 0.75  # of the VRAM Ollama claims, freed on the GPU: its runner's context is gone
ERROR_CYCLES = 3  # an NVML error (e.g. "did not answer in time") this many cycles in a row is an unusable GPU
# VRAM Ollama keeps free on each GPU when it places a model: OLLAMA_GPU_OVERHEAD (ollama.gpu_overhead, default
# 0) plus 457 MiB. Source: ollama/ollama ml/device.go DeviceInfo.MinimumMemory(), envconfig.GpuOverhead.
OLLAMA_MIN_FREE = 457 * 2**20
ROOM_MARGIN = 0.10  # and Ollama's size estimate may be this much short: only more room than that is "room"
CRITICAL_XIDS = frozenset({48, 63, 64, 79, 94, 95, 119, 120})
GIB = 2**30


# ---------------------------------------------------------------------------- status text
def gpu_label(gpu) -> str:
    names: dict[str, int] = {}
    for d in gpu.devices:
        key = f"{d.name.removeprefix('NVIDIA ').removeprefix('GeForce ')} {round(d.memory_total / GIB)} GB"
        names[key] = names.get(key, 0) + 1
    label = ", ".join(k if n == 1 else f"{n}× {k}" for k, n in names.items())
    return f"{label} (WSL2)" if gpu.platform == WSL2 else label


def _fragment(gpu) -> str:
    if gpu.state == "off":
        return ""
    if gpu.state == "none":
        return "no NVIDIA GPU found" + (" (WSL2)" if gpu.platform == WSL2 else "") + ": running on CPU"
    if gpu.state == "no-driver":  # the cause, without its "(PCI …)" detail
        return (gpu.error or NO_DRIVER).split(" (PCI ")[0]
    if gpu.state == "lost":
        return "GPU lost: reboot required"
    if gpu.state == "mismatch":
        return gpu.error or "NVIDIA driver updated: reboot to use the GPU"
    if gpu.state == "error":
        return f"GPU error ({gpu.error})"
    return "gpu " + gpu_label(gpu)


# ---------------------------------------------------------------------------- helpers
def _ollama_running(obs: Observation):
    so = obs.services.get(OLLAMA)
    if so is None or so.unit is None or OLLAMA in obs.maintenance:
        return None
    unit = so.unit
    if unit.active_state != "active" or unit.sub_state != "running":
        return None
    return so


def _reserve(config) -> int:
    """VRAM Ollama leaves free on each GPU (see OLLAMA_MIN_FREE)."""
    return OLLAMA_MIN_FREE + (config.ollama.gpu_overhead or 0)


def _off_gpu(gpu, models, reserve):
    """(model, evidence) of the first loaded model that runs (partly) on the CPU although the
    GPU has room for it: free VRAM beyond Ollama's `reserve` per GPU, plus the model's own
    VRAM, exceeds its size by ROOM_MARGIN. None when there is none."""
    free = sum(d.memory_total - d.memory_used for d in gpu.devices)
    room = sum(max(0, d.memory_total - d.memory_used - reserve) for d in gpu.devices)
    for m in models or ():
        if m.size_vram >= m.size or room + m.size_vram < m.size * (1 + ROOM_MARGIN):
            continue  # on the GPU, or a partial offload Ollama would choose anyway
        return m, (f"{m.name}: {m.size_vram / GIB:.1f} of {m.size / GIB:.1f} GiB in VRAM, "
                   f"{free / GIB:.1f} GiB free on the GPU")
    return None


def _runner_gone(gpu, so, seen):
    """(evidence, new record) about Ollama's runner having lost its CUDA context while /api/ps
    still lists its models in VRAM (Ollama notices only when a request uses the runner). Evidence:
    no PID of ollama.service among the GPU's compute processes while others are listed; or, for
    the same loaded models (`seen`, kept across cycles), Ollama's PID listed before and not now;
    or, where NVML never listed it (a container, no permission), the GPU's used memory fallen by
    RUNNER_GONE_SHARE of what Ollama says it holds there. None when fine or unknown: an empty
    process list alone is unknown (NVML often lists none in containers or without permission)."""
    models = [m for m in so.models or () if m.size_vram > 0]
    if not models or not gpu.devices:
        return None, None
    sig = (so.unit.main_pid, so.unit.active_enter_mono, tuple(sorted((m.name, m.size_vram) for m in models)))
    pids = set(gpu.ollama_pids)
    lists = [d.compute_pids for d in gpu.devices]
    listed = None if any(x is None for x in lists) else {p for x in lists for p in x}
    mine = bool(listed is not None and pids & listed)
    used = sum(d.memory_used for d in gpu.devices)
    same = seen is not None and seen["sig"] == sig
    seen = {"sig": sig, "listed": mine or (same and seen["listed"]), "used": max(used, seen["used"] if same else 0)}
    record, name = MappingProxyType(seen), models[0].name
    if mine:
        return None, record
    if pids and listed:
        return (f"{name} loaded, but none of ollama.service's {len(pids)} processes is a GPU "
                f"compute process ({len(listed)} listed)"), record
    if pids and seen["listed"] and listed is not None:
        return f"{name} loaded, but ollama.service's runner is no longer a GPU compute process", record
    claimed = sum(m.size_vram for m in models)
    drop = seen["used"] - used
    if not seen["listed"] and drop >= RUNNER_GONE_SHARE * claimed:
        return (f"{name}: the GPU's used memory fell by {drop / GIB:.1f} GiB to {used / GIB:.1f} GiB "
                f"while ollama still lists {claimed / GIB:.1f} GiB in VRAM"), record
    return None, record


def _announce_reboot(gpu, h) -> list[Action]:
    """A driver updated under the running module: nothing to restart (Ollama serves on the CPU
    until the reboot); the device job, once per pair of versions, writes /run/reboot-required."""
    if gpu.state != "mismatch":
        return []
    versions = (gpu.driver, gpu.driver_installed)
    if h.get("reboot_announced") == versions:
        return []
    h["reboot_announced"] = versions
    return [Action("start-job", "devices", "driver-mismatch", gpu.error or "NVIDIA driver/library version mismatch")]


# ---------------------------------------------------------------------------- main
def decide_gpu(config, obs: Observation, gh, now: float):
    """One cycle of the GPU policy, step by step: the state's change, what asks for the recovery
    ladder, the ladder under way or starting, then (while no ladder runs and no reboot is
    required) the boot race and the CPU fallback."""
    gpu = obs.gpu
    h = dict(gh)
    if gpu.state == "off":
        return (), MappingProxyType(h), _fragment(gpu), ()
    actions: list[Action] = []
    notes: list[str] = []
    gpu_changed = _note_state(gpu, h, notes)
    so = _ollama_running(obs)
    actions += _announce_reboot(gpu, h)
    _release_fallback(obs, so, h, gpu_changed, notes)
    trigger = _xid_trigger(config, gpu, notes)
    _note_resume(gpu, h, now, notes)
    missing = _runner_missing(gpu, so, h)
    off = _off_gpu(gpu, so.models, _reserve(config)) if so is not None and gpu.state == "ok" else None
    trigger = trigger or _resume_trigger(gpu, so, off, h, now, missing)
    fragment = ladder.follow(config, obs, so, off, h, now, notes, _fragment(gpu))
    fragment = ladder.start(obs, h, now, trigger, actions, notes, fragment)
    if h.get("reboot_required"):
        return tuple(actions), MappingProxyType(h), ladder.reboot_fragment(h), tuple(notes)
    if h.get("ladder") is None:
        _boot_race(gpu, so, h, actions)
        fragment = _cpu_fallback(config, obs, so, off, h, now, missing, actions, notes, fragment)
    return tuple(actions), MappingProxyType(h), fragment, tuple(notes)


# ---------------------------------------------------------------------------- state
def _note_state(gpu, h, notes) -> bool:
    """Notes a change of the GPU's state (usable again after a lost or failed one: recovery allowed
    again) and counts NVML errors in a row; whether the state changed since the last cycle."""
    previous = h.get("state")
    if gpu.state != previous:
        if previous is not None:
            notes.append(f"GPU: {previous} -> {gpu.state}" + (f" ({gpu.error})" if gpu.error else ""))
        if h.get("reboot_required") and previous in ("lost", "error", "none") and gpu.state == "ok" \
                and h.get("ladder") is None:
            notes.append("GPU usable again (driver reloaded?): recovery attempts allowed again")
            h["reboot_required"] = None
            h["reboot_for"] = None
        h["state"] = gpu.state
    h["error_cycles"] = h.get("error_cycles", 0) + 1 if gpu.state == "error" else 0
    return previous is not None and gpu.state != previous


def _release_fallback(obs, so, h, gpu_changed, notes) -> None:
    """CPU-fallback restarts held back are allowed again once something changed: the GPU's state,
    the configuration, or Ollama started anew (not by us: we held back)."""
    held = h.get("fallback_held")
    if held is None:
        return
    restarted = so is not None and so.unit.active_enter_mono != held["enter"]
    why = ("the GPU's state changed" if gpu_changed else
           "the configuration was reloaded" if obs.generation != held["generation"] else
           "ollama was started anew" if restarted else None)
    if why:
        notes.append(f"GPU: {why}: restarting ollama for a CPU fallback is allowed again")
        h["fallback_held"] = None
        h["fallback_restarts"] = ()


# ---------------------------------------------------------------------------- what asks for the ladder
def _xid_trigger(config, gpu, notes):
    """(cause, evidence, xid) asking for the ladder: the first critical Xid (each Xid noted, those in
    gpu.ignore_xids ignored), else a lost GPU; None when nothing asks."""
    trigger: tuple[str, str, int | None] | None = None
    for ev in gpu.xids:
        where = f" on {ev.uuid}" if ev.uuid else ""
        if ev.xid in config.gpu.ignore_xids:
            notes.append(f"GPU: application Xid {ev.xid}{where} ignored (gpu.ignore_xids)")
        elif ev.xid in CRITICAL_XIDS:
            notes.append(f"GPU: critical Xid {ev.xid}{where}")
            trigger = trigger or ("xid", f"XID {ev.xid}{where}", ev.xid)
        else:
            notes.append(f"GPU: Xid {ev.xid}{where} reported; not one that needs a reset")
    if gpu.state == "lost":
        trigger = trigger or ("gpu-lost", "NVML: GPU is lost (fell off the bus)", None)
    return trigger


def _note_resume(gpu, h, now, notes) -> None:
    """A resume seen for the first time opens RESUME_WINDOW (not an old marker seen anew after a
    restart of localaid)."""
    resumed = gpu.resumed_at
    if resumed is not None and resumed != h.get("resume_seen"):
        h["resume_seen"] = resumed
        if now - resumed < RESUME_WINDOW:
            h["resume_until"] = resumed + RESUME_WINDOW
            notes.append("resumed from sleep: checking the GPU now")


def _runner_missing(gpu, so, h) -> str | None:
    """Evidence that Ollama's runner lost its GPU (_runner_gone), kept across cycles in
    h["runner_seen"] while Ollama runs on a usable GPU."""
    if so is None or gpu.state != "ok":
        h["runner_seen"] = None
        return None
    missing, h["runner_seen"] = _runner_gone(gpu, so, h.get("runner_seen"))
    return missing


def _resume_trigger(gpu, so, off, h, now, missing):
    """Within RESUME_WINDOW of a resume, ERROR_CYCLES NVML errors in a row or a CPU fallback (`off`,
    `missing`) ask for the ladder at once: (cause, evidence, xid), or None."""
    if not now < h.get("resume_until", float("-inf")):
        return None
    if gpu.state == "error" and h["error_cycles"] >= ERROR_CYCLES:
        return ("resume", f"after resume: {gpu.error} ({h['error_cycles']} checks in a row)", None)
    if so is not None and gpu.state == "ok" and (off or missing):
        return ("resume", "after resume: " + (off[1] if off else missing), None)
    return None


# ---------------------------------------------------------------------------- Ollama on the CPU
def _boot_race(gpu, so, h, actions) -> None:
    """Ollama looks for GPUs only at start: device nodes fixed after it started restart it, once
    per fix."""
    fixed = gpu.nodes_changed_at
    if so is not None and fixed is not None and so.unit.active_enter_mono < fixed \
            and h.get("boot_race_for") != fixed and gpu.state == "ok":
        h["boot_race_for"] = fixed
        actions.append(Action("restart", UNITS[OLLAMA], "boot-race",
                              "GPU device nodes were fixed after ollama started; it only looks for GPUs at start",
                              service=OLLAMA))


def _cpu_fallback(config, obs, so, off, h, now, missing, actions, notes, fragment) -> str:
    """Ollama on the CPU while the GPU could serve: restarted (nothing else asked this cycle, our
    last restart seen), unless the driver is too old for it (restarts cannot help: the status
    says so). The status fragment."""
    gpu = obs.gpu
    recent = tuple(t for t in h.get("fallback_restarts", ()) if now - t < FALLBACK_WINDOW)
    if missing is None:
        h["pid_miss_since"] = None
    elif h.get("pid_miss_since") is None:
        h["pid_miss_since"] = now
    # our last restart not seen yet (ollama's start time is older): wait for it, do not count it twice
    restarting = so is not None and bool(recent) and so.unit.active_enter_mono < recent[-1] \
        and now - recent[-1] < RESTART_SLACK
    old_driver = driver_support.too_old(so.version, gpu.driver, [d.compute_capability for d in gpu.devices]) \
        if so is not None and gpu.state == "ok" else None
    if old_driver:  # Ollama ignores a GPU whose driver is too old for it
        fragment = old_driver
    elif so is not None and gpu.state == "ok" and so.models and not actions and not restarting:
        evidence, recent = _fallback_evidence(config, so, off, h, now, missing, recent, notes)
        if evidence is not None:
            recent, fragment = _restart_or_hold(obs, so, h, now, evidence, recent, actions, notes, fragment)
    h["fallback_restarts"] = recent
    return fragment


def _fallback_evidence(config, so, off, h, now, missing, recent, notes):
    """(evidence of a CPU fallback or None, the restarts that still count): a model off the GPU
    although it has room (once loaded: health.model_load_grace), or the runner gone from the GPU
    for PID_MISS_AFTER. Restarts after which the models are back on the GPU no longer count."""
    if off is not None:
        m, evidence = off
        if now - so.unit.active_enter_mono < config.health.model_load_grace and m.size_vram > 0:
            return None, recent  # still loading layers onto the GPU
        return evidence, recent
    if missing is not None and now - h["pid_miss_since"] >= PID_MISS_AFTER:
        return missing, recent
    if missing is None and recent and so.unit.active_enter_mono >= recent[-1] \
            and any(m.size_vram > 0 for m in so.models):  # they helped: only the others count
        notes.append(f"GPU: ollama back on the GPU after {len(recent)} restart(s) for a CPU fallback")
        return None, ()
    return None, recent


def _restart_or_hold(obs, so, h, now, evidence, recent, actions, notes, fragment):
    """Restart Ollama for a CPU fallback; after FALLBACK_RESTARTS in FALLBACK_WINDOW that did not
    help, hold back until something changes (_release_fallback) and say so. (restarts, fragment)."""
    held = h.get("fallback_held")
    if held is None and len(recent) >= FALLBACK_RESTARTS:
        held = MappingProxyType({"enter": so.unit.active_enter_mono, "generation": obs.generation,
                                 "tries": len(recent)})
        h["fallback_held"] = held
        notes.append(f"GPU: ollama still on CPU after {len(recent)} restarts ({evidence}): not restarting "
                     "it again until it is started anew, the GPU changes or the configuration is "
                     "reloaded; check `localaid doctor`")
    if held is not None:
        return recent, fragment + f", model on CPU; not restarting again ({held['tries']} tries): check `localaid doctor`"
    h["pid_miss_since"] = None
    actions.append(Action("restart", UNITS[OLLAMA], "cpu-fallback", evidence, service=OLLAMA))
    return recent + (now,), fragment


# ---------------------------------------------------------------------------- models warm
def warm(config, obs: Observation, hist, ollama_state: str, now: float):
    """Keep configured models loaded (for policy.decide): preload those missing from /api/ps once
    Ollama answers, so that a restarted or healed Ollama has its models warm on the GPU. The hold
    after a preload (health.model_load_grace) is per Ollama process: a new one (MainPID or start
    time changed: an admin restart, a crash, an upgrade, a resume) has nothing loaded and is
    warmed as soon as it answers, whoever restarted it; and only until the model is seen loaded:
    one that loaded and then left (its runner died on a CUDA error, someone unloaded it) is
    preloaded again at once. Returns (actions, attempts, process)."""
    so = obs.services.get(OLLAMA)
    unit = so.unit if so is not None else None
    process = (unit.main_pid, unit.active_enter_mono) if unit is not None and unit.main_pid else hist.warm_process
    attempts = dict(hist.warm_attempts) if process == hist.warm_process else {}
    if ollama_state != "ok" or so is None or so.models is None:
        return [], MappingProxyType(attempts), process
    setup, job = obs.jobs.get("ollama-setup"), hist.jobs.get("ollama-setup")
    if (setup is not None and setup.at_work) or (job is not None and job.state == "started"):  # or started now
        return [], MappingProxyType(attempts), process  # models may still be downloading
    loaded = {m.name for m in so.models}
    actions = []
    for spec in config.ollama.models:
        if not spec.keep_warm or _loaded(spec.name, loaded):
            attempts.pop(spec.name, None)  # loaded: that preload is over
            continue
        key = f"preload:{spec.name}"
        last = attempts.get(spec.name)
        if key in obs.in_flight or (last is not None and now - last < config.health.model_load_grace):
            continue
        attempts[spec.name] = now
        actions.append(Action("preload", spec.name, "warm", "configured keep_warm, not loaded", service=OLLAMA))
    return actions, MappingProxyType(attempts), process


def _loaded(name: str, loaded: set[str]) -> bool:
    return name in loaded or (":" not in name and f"{name}:latest" in loaded)
