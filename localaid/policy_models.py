"""`ollama.models: auto`: when the chat model is picked, when it is picked again, and what
STATUS says until then. Pure, like policy.py; the table and the arithmetic are catalog.py's.

The pick waits for a GPU observation that settles the question: a working GPU (its memory), or
no NVIDIA GPU at all ("none"; "off" when gpu.watch is false: sized by RAM and cores). A card
whose driver is missing, a GPU lost or an NVML error may be a boot race or a driver update in
progress: a CPU-sized pick then would stay small for good, so it waits and says so. Once made,
the pick is kept (config.load reads it back as ollama.models); a changed GPU or changed inputs
(context length, parallel requests, GPU overhead) make it look again, and only a pick that no
longer fits is replaced, by a smaller one. A bigger card is doctor's suggestion, never a
download by itself.
"""

from __future__ import annotations

from localaid.catalog import Inputs, Machine, choose, revisit
from localaid.records import OLLAMA, Action, Observation

SETTLED_WITHOUT_GPU = ("none", "off")


def machine(obs: Observation) -> Machine | None:
    """The machine to size the model for, or None while the GPU observation does not settle it."""
    if obs.host is None:
        return None
    g = obs.gpu
    if g.state == "ok" and g.devices:
        d = max(g.devices, key=lambda d: d.memory_total)
        return Machine(obs.host.ram, obs.host.cores, d.name, d.memory_total)
    if g.state in SETTLED_WITHOUT_GPU:
        return Machine(obs.host.ram, obs.host.cores)
    return None


def decide_model(config, obs: Observation) -> tuple[list[Action], str]:
    """(actions, STATUS fragment): a choose-model action carrying the catalog.Pick to record."""
    o = config.ollama
    if not o.picks_model or obs.host is None:  # host: read by observe whenever auto
        return [], ""
    m = machine(obs)
    inputs = Inputs.of(config)
    if o.chosen is None:
        if m is None:
            return [], f"model: picked once the GPU answers (GPU {obs.gpu.state})"
        pick = choose(m, inputs)
        return [Action("choose-model", pick.model, "auto", pick.reason, service=OLLAMA, data=pick)], \
            f"model: {pick.model} picked"
    new = revisit(o.chosen, m, inputs) if m is not None else None
    if new is None:
        return [], ""
    return [Action("choose-model", new.model, "revisit", new.reason, service=OLLAMA, data=new)], \
        f"model: {new.model} picked"
