"""The GPU part of the policy: pure, like policy.py (no I/O, time comes in as `now`).

    decide_gpu(config, observation, gpu_history, now) -> (actions, gpu_history, status fragment, notes)

Heals what leaves Ollama on the CPU:
- boot race: Ollama discovers GPUs once, at start. If the device nodes appeared or were fixed
  (localaid-devices.service records when) after Ollama started, restart it once.
- CPU fallback: a loaded model not fully in VRAM while the GPU has room for it: restart Ollama
  (the supervisor then preloads the configured models), at most FALLBACK_RESTARTS times per
  FALLBACK_WINDOW, after which it is reported and left alone.
A lost GPU is reported as needing a reboot; it never causes a restart loop.
"""

from __future__ import annotations

from types import MappingProxyType

from localaid.model import OLLAMA, UNITS, Action, Observation

FALLBACK_RESTARTS = 2
FALLBACK_WINDOW = 3600.0
GIB = 2**30


def _fragment(gpu) -> str:
    if gpu.state == "off":
        return ""
    if gpu.state == "none":
        return "no NVIDIA GPU found: running on CPU"
    if gpu.state == "lost":
        return "GPU lost: reboot required"
    if gpu.state == "error":
        return f"GPU error ({gpu.error})"
    names = {}
    for d in gpu.devices:
        key = f"{d.name.removeprefix('NVIDIA ').removeprefix('GeForce ')} {round(d.memory_total / GIB)} GB"
        names[key] = names.get(key, 0) + 1
    return "gpu " + ", ".join(k if n == 1 else f"{n}× {k}" for k, n in names.items())


def _ollama_running(obs: Observation):
    so = obs.services.get(OLLAMA)
    if so is None or so.unit is None or OLLAMA in obs.maintenance:
        return None
    unit = so.unit
    if unit.active_state != "active" or unit.sub_state != "running":
        return None
    return so


def decide_gpu(config, obs: Observation, gh, now: float):
    gpu = obs.gpu
    h = dict(gh)
    actions: list[Action] = []
    notes: list[str] = []
    fragment = _fragment(gpu)
    if gpu.state != h.get("state"):
        if h.get("state") is not None:
            notes.append(f"GPU: {h.get('state')} -> {gpu.state}" + (f" ({gpu.error})" if gpu.error else ""))
        h["state"] = gpu.state
    so = _ollama_running(obs)
    unit_name = UNITS[OLLAMA]

    # Boot race: nodes fixed after Ollama started.
    fixed = gpu.nodes_changed_at
    if so is not None and fixed is not None and so.unit.active_enter_mono < fixed \
            and h.get("boot_race_for") != fixed and gpu.state == "ok":
        h["boot_race_for"] = fixed
        actions.append(Action("restart", unit_name, "boot-race",
                              "GPU device nodes were fixed after ollama started; it only looks for GPUs at start",
                              service=OLLAMA))

    # CPU fallback: a model not (fully) in VRAM although the GPU has room for it.
    recent = tuple(t for t in h.get("fallback_restarts", ()) if now - t < FALLBACK_WINDOW)
    if so is not None and gpu.state == "ok" and so.models and not actions:
        free = sum(d.memory_total - d.memory_used for d in gpu.devices)
        uptime = now - so.unit.active_enter_mono
        for m in so.models:
            if m.size_vram >= m.size or free + m.size_vram < m.size:
                continue  # on the GPU, or a partial offload the GPU cannot avoid
            evidence = (f"{m.name}: {m.size_vram / GIB:.1f} of {m.size / GIB:.1f} GiB in VRAM, "
                        f"{free / GIB:.1f} GiB free on the GPU")
            if uptime < config.health.model_load_grace and m.size_vram > 0:
                break  # still loading layers onto the GPU
            if len(recent) >= FALLBACK_RESTARTS:
                fragment += f" (ollama on CPU: {evidence}; {len(recent)} restarts did not help)"
                break
            recent += (now,)
            actions.append(Action("restart", unit_name, "cpu-fallback", evidence, service=OLLAMA))
            break
    h["fallback_restarts"] = recent
    return tuple(actions), MappingProxyType(h), fragment, tuple(notes)
