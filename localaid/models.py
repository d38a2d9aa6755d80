"""`localaid pull MODEL` and `localaid models`: talk to Ollama's API directly.

Both work whether or not the localaid daemon runs. `pull` shows one progress bar (size, speed,
ETA) on a terminal and plain lines otherwise (logs, pipes); `models` lists installed models,
configured ones not pulled yet and those loaded in memory, with where each runs (GPU, CPU, or
partly both) and whether it fits the GPU's memory with room for its KV cache.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace

from localaid.adapters.ollama import (
    InstalledModel, OllamaClient, OllamaError, PullProgress, RunningModel, installed_size, same_model,
)
from localaid.vram import NO_GPU, NOT_PULLED, vram_advice, vram_note  # noqa: F401



def _size(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------------------ pull
class PullDisplay:
    """Turns pull progress lines into a bar (TTY) or plain lines (every status change and 10 %)."""

    def __init__(self, model: str, out=None, tty: bool | None = None, clock=time.monotonic):
        self.model = model
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.layers: dict[str, tuple[int, int]] = {}
        self.status = ""
        self.samples: list[tuple[float, int]] = []  # (time, bytes done) for the speed
        self.last_decile = -1
        self.last_draw = 0.0
        self.bar_shown = False

    @property
    def totals(self) -> tuple[int, int]:
        return sum(c for c, _ in self.layers.values()), sum(t for _, t in self.layers.values())

    def speed(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def update(self, p: PullProgress) -> None:
        now = self.clock()
        if p.digest and p.total:
            self.layers[p.digest] = (min(p.completed or 0, p.total), p.total)
            done, _ = self.totals
            self.samples.append((now, done))
            self.samples = [s for s in self.samples if now - s[0] <= 10.0] or self.samples[-1:]
            self._progress(now)
            return
        if p.status and p.status != self.status:
            self.status = p.status
            self._line(p.status)

    def _progress(self, now: float) -> None:
        done, total = self.totals
        frac = done / total if total else 0.0
        speed = self.speed()
        eta = f"ETA {_duration((total - done) / speed)}" if speed > 0 and done < total else ""
        text = f"{_size(done)}/{_size(total)}  {speed / 1e6:5.1f} MB/s  {eta}".rstrip()
        if self.tty:
            if now - self.last_draw < 0.1 and done < total:
                return
            self.last_draw = now
            width = shutil.get_terminal_size((80, 20)).columns
            bar_w = max(10, min(40, width - len(text) - 12))
            fill = int(bar_w * frac)
            self.out.write(f"\r\x1b[K{frac * 100:3.0f}% [{'#' * fill}{'.' * (bar_w - fill)}] {text}")
            self.out.flush()
            self.bar_shown = True
        else:
            decile = int(frac * 10)
            if decile != self.last_decile:
                self.last_decile = decile
                self.out.write(f"{self.model}: {frac * 100:.0f}% {text}\n")
                self.out.flush()

    def _line(self, text: str) -> None:
        if self.tty and self.bar_shown:
            self.out.write("\n")
            self.bar_shown = False
        self.out.write(f"{self.model}: {text}\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.bar_shown:
            self.out.write("\n")
        _, total = self.totals
        took = self.clock() - self.start
        self.out.write(f"pulled {self.model}" + (f" ({_size(total)})" if total else "") + f" in {_duration(took)}\n")
        self.out.flush()


def pull_main(args, config) -> int:
    model = args.model
    display = PullDisplay(model)
    with OllamaClient(config.ollama.url, timeout=10.0) as client:
        try:
            client.pull(model, display.update)
        except OllamaError as e:
            if display.tty and display.bar_shown:
                print(file=sys.stdout)
            print(f"localaid pull: {e}", file=sys.stderr)
            if "cannot reach" in str(e) or "did not answer" in str(e):
                print("  is ollama.service running? systemctl status ollama; localaid status", file=sys.stderr)
            return 1
    display.finish()
    if not any(same_model(model, s.name) for s in config.ollama.models):
        print(f"to keep it loaded and have it pulled on new machines, add it to ollama.models in "
              f"{(config.sources or ('/etc/localaid/localaid.yaml',))[0]}")
    return 0


# ---------------------------------------------------------------------------------------- models
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
    from localaid.adapters.gpu import Gpu
    gpu = Gpu(config, events=False)
    try:
        obs = gpu.observe()
    finally:
        gpu.close()
    return max((d.memory_total for d in obs.devices), default=None)


def advise(table: list[ModelRow], configured: tuple[str, ...], gpu_total: int | None) -> list[ModelRow]:
    """The rows plus one per configured model not pulled yet, each with its VRAM advice as note."""
    missing = [ModelRow(n, 0, False) for n in configured if not any(same_model(n, r.name) for r in table)]
    return [replace(r, note=vram_note(r.size, gpu_total)[1]) for r in table + missing]


def render(table: list[ModelRow]) -> str:
    if not table:
        return "no models installed: localaid pull MODEL (e.g. llama3.2:3b)"
    head = ("NAME", "SIZE", "PARAMS", "QUANT", "LOADED", "VRAM", "WHERE", "UNTIL")
    lines = []
    for r in table:
        until = r.expires_at[:19].replace("T", " ") if r.loaded else ""
        if until[:4].isdigit() and int(until[:4]) > 2200:  # keep_alive < 0: Ollama adds ~292 years
            until = "forever"
        lines.append((r.name, _size(r.size) if r.size else "-", r.parameter_size or "-", r.quantization or "-",
                      _size(r.loaded_size) if r.loaded else "-", _size(r.size_vram) if r.loaded else "-",
                      r.where, until or "-") + ((r.note,) if r.note else ()))
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip()]
    for ln in lines:
        out.append((fmt.format(*ln[:len(head)]) + ("  " + ln[-1] if len(ln) > len(head) else "")).rstrip())
    return "\n".join(out)


def models_main(args, config) -> int:
    with OllamaClient(config.ollama.url, timeout=5.0) as client:
        try:
            installed = client.tags()
            running = client.running()
        except OllamaError as e:
            print(f"localaid models: {e}", file=sys.stderr)
            return 1
    gpu_total = gpu_memory(config)
    table = advise(rows(installed, running), tuple(s.name for s in config.ollama.models), gpu_total)
    if getattr(args, "json", False):
        doc = {"installed": [asdict(m) for m in installed], "loaded": [asdict(m) for m in running],
               "gpu_memory": gpu_total, "models": [dict(asdict(r), where=r.where) for r in table]}
        print(json.dumps(doc, indent=1))
    else:
        print(render(table))
    return 0
