"""`localaid models [--json]`: installed, configured and loaded models from Ollama's API.

Lists installed models, configured ones not pulled yet and those loaded in memory, with where
each runs (GPU, CPU, or partly both) and whether it fits the GPU's memory with room for its KV
cache. Talks to Ollama directly: works whether or not the localaid daemon runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace

from localaid.adapters.ollama import InstalledModel, OllamaClient, OllamaError, RunningModel, same_model
from localaid.cli.common import EX_FAIL, EX_OK, load_config, size_text
from localaid.vram import vram_note


@dataclass(frozen=True)
class ModelRow:
    name: str
    size: int
    installed: bool
    loaded: bool = False
    size_vram: int = 0
    loaded_size: int = 0
    expires_at: str = ""
    parameter_size: str = ""
    quantization: str = ""
    note: str = ""  # free text, e.g. whether it fits the GPU's memory

    @property
    def where(self) -> str:
        if not self.loaded:
            return "-"
        if self.loaded_size and self.size_vram >= self.loaded_size:
            return "GPU"
        if self.size_vram <= 0:
            return "CPU"
        return f"{self.size_vram * 100 // max(1, self.loaded_size)}% GPU"


def rows(installed: tuple[InstalledModel, ...], running: tuple[RunningModel, ...]) -> list[ModelRow]:
    by_name: dict[str, ModelRow] = {}
    for m in installed:
        by_name[m.name] = ModelRow(m.name, m.size, True, parameter_size=m.parameter_size,
                                   quantization=m.quantization)
    for r in running:
        key = next((n for n in by_name if same_model(n, r.name)), r.name)
        base = by_name.get(key) or ModelRow(r.name, r.size, False)
        by_name[key] = ModelRow(base.name, base.size, base.installed, True, r.size_vram, r.size, r.expires_at,
                                base.parameter_size, base.quantization, base.note)
    return sorted(by_name.values(), key=lambda x: (not x.loaded, x.name))


# ----------------------------------------------------------------------------------- VRAM advice
def gpu_memory(config) -> int | None:
    """Memory of the largest NVIDIA GPU, None when there is none usable (NVML, no events)."""
    from localaid.adapters.gpu import observe_once
    return max((d.memory_total for d in observe_once(config).devices), default=None)


def advise(table: list[ModelRow], configured: tuple[str, ...], gpu_total: int | None, inputs=None) -> list[ModelRow]:
    """The rows plus one per configured model not pulled yet, each with its VRAM advice as note."""
    missing = [ModelRow(n, 0, False) for n in configured if not any(same_model(n, r.name) for r in table)]
    return [replace(r, note=vram_note(r.size, gpu_total, r.name, inputs)[1]) for r in table + missing]


def render(table: list[ModelRow]) -> str:
    if not table:
        return "no models installed: localaid pull MODEL (e.g. llama3.2:3b)"
    head = ("NAME", "SIZE", "PARAMS", "QUANT", "LOADED", "VRAM", "WHERE", "UNTIL")
    lines = []
    for r in table:
        until = r.expires_at[:19].replace("T", " ") if r.loaded else ""
        if until[:4].isdigit() and int(until[:4]) > 2200:  # keep_alive < 0: Ollama adds ~292 years
            until = "forever"
        lines.append((r.name, size_text(r.size) if r.size else "-", r.parameter_size or "-", r.quantization or "-",
                      size_text(r.loaded_size) if r.loaded else "-", size_text(r.size_vram) if r.loaded else "-",
                      r.where, until or "-") + ((r.note,) if r.note else ()))
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip()]
    for ln in lines:
        out.append((fmt.format(*ln[:len(head)]) + ("  " + ln[-1] if len(ln) > len(head) else "")).rstrip())
    return "\n".join(out)


def main(args) -> int:
    config = load_config(args)
    if getattr(args, "suggest", False):
        return suggest(args, config)
    return run(args, config)


# ------------------------------------------------------------------------- --suggest: the tiers
def suggest_rows(m, inputs, picked: str | None, would: str | None) -> list[dict]:
    """One row per catalogue entry: its figures, its tier, whether it fits this machine."""
    from localaid.catalog import CATALOG, cpu_tier_of, fits_gpu, tier_name
    rows_out = []
    for e in CATALOG:
        if m is None:
            fits = None
        elif m.gpu_name:
            fits = fits_gpu(e, m.vram, inputs)
        else:
            fits = e.need(inputs.context, inputs.parallel) <= m.ram // 2  # as catalog's CPU tiers count
        cpu = cpu_tier_of(e.name)
        tier = tier_name(e, inputs) + (f"; {cpu}" if cpu else "")
        mark = "picked" if e.name == picked else ("would be picked" if e.name == would else "")
        rows_out.append({"model": e.name, "params": e.params, "download": e.download,
                         "need": e.need(inputs.context, inputs.parallel), "tier": tier, "fits": fits, "mark": mark})
    return rows_out


def suggest(args, config) -> int:
    from localaid.catalog import GIB, Inputs, choose, gpu_budget
    from localaid.adapters.gpu import machine_now
    m, gobs = machine_now(config)
    inputs = Inputs.of(config)
    o = config.ollama
    picked = o.chosen.model if o.models_auto and o.chosen is not None else None
    would = choose(m, inputs) if m is not None else None
    table = suggest_rows(m, inputs, picked, would.model if would else None)
    if getattr(args, "json", False):
        print(json.dumps({"machine": asdict(m) if m else None, "gpu_state": gobs.state, "inputs": asdict(inputs),
                          "auto": o.models_auto, "picked": asdict(o.chosen) if o.chosen else None,
                          "would_pick": asdict(would) if would else None, "tiers": table}, indent=1))
        return EX_OK
    if m is None:
        print(f"This machine: the GPU does not answer now ({gobs.state}: {gobs.error or 'see localaid doctor'}); "
              "localaid waits for it before it picks a model.")
    elif m.gpu_name:
        print(f"This machine: {m.basis}; {gpu_budget(m.vram, inputs) / GIB:.1f} GiB of it for a chat model "
              f"(context {inputs.context} tokens × {inputs.parallel}).")
    else:
        print(f"This machine: {m.basis}: models run on the CPU.")
    head = f"{'MODEL':<12} {'PARAMS':>6} {'DOWNLOAD':>9} {'NEEDS':>9}  {'FITS':<4}  TIER"
    print("\n" + head)
    for r in table:
        fits = {True: "yes", False: "no", None: "?"}[r["fits"]]
        print(f"{r['model']:<12} {r['params']:>6} {size_text(r['download']):>9} {size_text(r['need']):>9}  "
              f"{fits:<4}  {r['tier']}" + (f"  ← {r['mark']}" if r["mark"] else ""))
    print("FITS: needs at most the GPU memory left for a chat model" if m is not None and m.gpu_name else
          "FITS: needs at most half the RAM (the CPU tier is what answers at a readable speed)")
    print("")
    if not o.models_auto:
        print("ollama.models is a list: localaid pulls those and picks nothing (auto would pick "
              f"{would.model if would else 'once the GPU answers'}).")
    elif o.chosen is not None:
        print(f"Picked {o.chosen.model} for {o.chosen.basis}: {o.chosen.reason}.")
        if would is not None and would.model != o.chosen.model:
            print(f"For this machine now: {would.model} ({would.reason}); to use it, set ollama.models: "
                  f"[{would.model}] in {(config.sources or ('/etc/localaid/localaid.yaml',))[0]}.")
    elif would is not None:
        print(f"Would pick {would.model}: {would.reason}.")
    return EX_OK


def run(args, config) -> int:
    with OllamaClient(config.ollama.url, timeout=5.0) as client:
        try:
            installed = client.tags()
            running = client.running()
        except OllamaError as e:
            print(f"localaid models: {e}", file=sys.stderr)
            return EX_FAIL
    gpu_total = gpu_memory(config)
    from localaid.catalog import Inputs
    table = advise(rows(installed, running), tuple(s.name for s in config.ollama.models), gpu_total,
                   Inputs.of(config))
    if getattr(args, "json", False):
        doc = {"installed": [asdict(m) for m in installed], "loaded": [asdict(m) for m in running],
               "gpu_memory": gpu_total, "models": [dict(asdict(r), where=r.where) for r in table]}
        print(json.dumps(doc, indent=1))
    else:
        print(render(table))
    return EX_OK
