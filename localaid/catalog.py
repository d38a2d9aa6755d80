"""The chat models localaid picks from for `ollama.models: auto`, and the pick. Pure, no I/O.

One family (Qwen3: one chat template, tool calling and a thinking mode at every size, so a
bigger card changes the quality, not the behaviour), one entry per size, smallest first. Each
entry's figures and where they come from:

- download: the size Ollama's library lists for the tag (ollama.com/library/qwen3/tags, the
  default Q4_K_M quantisations, read 2026-12); the weights take about as much memory;
- kv_per_token: bytes of KV cache one token of context takes with Ollama's default f16 cache,
  2 (K and V) × layers × KV heads × head dim (128) × 2 bytes, from the architecture table of
  the Qwen3 technical report (arXiv 2505.09388, table 1) and each model card's config.json.

What a model needs, on the GPU or in RAM, is then its weights, the KV cache of the context
(ollama.context_length, else 4096 tokens, Ollama's default below 24 GiB of VRAM) times the
requests served at once (ollama.num_parallel, else 1), and COMPUTE for Ollama's compute graph.
On a GPU, RESERVE (CUDA context, a desktop's frame buffers), the embedding model when Open WebUI
embeds through this Ollama, ollama.gpu_overhead and HEADROOM of the card stay free. The largest
entry that fits is chosen. These are estimates: `localaid models` shows what Ollama really
holds (ollama ps), and a list in ollama.models always wins.

Without a usable GPU, generation speed is bounded by memory bandwidth (tokens/s ≈ bandwidth /
weights) and prompt processing by the cores: CPU_TIERS picks a small model by RAM and cores, so
that a first answer comes in seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
DEFAULT_CONTEXT = 4096          # tokens: Ollama's default context below 24 GiB of VRAM
COMPUTE = 3 * GIB // 4          # Ollama's compute graph at that context (0.3-0.6 GiB seen on 8B models)
RESERVE = GIB // 2              # CUDA context and driver, a desktop's frame buffers
EMBEDDING = GIB // 2            # nomic-embed-text (274 MB) loaded with its own context
HEADROOM = 0.05                 # of the card: fragmentation, a longer chat
CARDS_GIB = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 80)   # sizes cards are sold with, for tier names
NO_GPU = "no GPU"               # how Machine.basis begins without one


@dataclass(frozen=True)
class Entry:
    name: str
    download: int               # bytes (the library page's figure)
    kv_per_token: int           # bytes of f16 KV cache per token of context
    params: str                 # "8.2B": for people

    def need(self, context: int = DEFAULT_CONTEXT, parallel: int = 1) -> int:
        """Bytes of memory the loaded model takes (weights, KV cache, compute graph)."""
        return self.download + self.kv_per_token * context * parallel + COMPUTE


def _kv(layers: int, kv_heads: int, head_dim: int = 128) -> int:
    return 2 * layers * kv_heads * head_dim * 2


CATALOG = (
    Entry("qwen3:0.6b", 523_000_000, _kv(28, 8), "0.6B"),
    Entry("qwen3:1.7b", 1_400_000_000, _kv(28, 8), "1.7B"),
    Entry("qwen3:4b", 2_500_000_000, _kv(36, 8), "4.0B"),
    Entry("qwen3:8b", 5_200_000_000, _kv(36, 8), "8.2B"),
    Entry("qwen3:14b", 9_300_000_000, _kv(40, 8), "14.8B"),
    Entry("qwen3:32b", 20_000_000_000, _kv(64, 8), "32.8B"),
)
BY_NAME = {e.name: e for e in CATALOG}

# Without a GPU: (least RAM, least cores, model), first match wins.
CPU_TIERS = (
    (16 * GIB, 8, "qwen3:4b"),
    (8 * GIB, 2, "qwen3:1.7b"),
    (0, 1, "qwen3:0.6b"),
)


@dataclass(frozen=True)
class Machine:
    """What the pick looks at. gpu_name None: no usable NVIDIA GPU (CPU tiers)."""
    ram: int
    cores: int
    gpu_name: str | None = None
    vram: int = 0               # the largest GPU's memory (Ollama keeps a model on one card when it fits)

    @property
    def basis(self) -> str:
        """The machine in a few words; a pick is revisited when this changes."""
        if self.gpu_name:
            return f"{self.gpu_name}, {self.vram / GIB:.0f} GiB"
        return f"{NO_GPU}, {self.ram / GIB:.0f} GiB RAM, {self.cores} cores"


@dataclass(frozen=True)
class Inputs:
    """The configuration the pick depends on (ollama.context_length, .num_parallel,
    .gpu_overhead, and whether the embedding model shares the GPU)."""
    context: int = DEFAULT_CONTEXT
    parallel: int = 1
    gpu_overhead: int = 0
    embedding: bool = True

    @classmethod
    def of(cls, config) -> Inputs:
        o = config.ollama
        return cls(o.context_length or DEFAULT_CONTEXT, o.num_parallel or 1, o.gpu_overhead or 0,
                   config.embeds_with_ollama)

    @property
    def key(self) -> str:
        return f"context {self.context}, parallel {self.parallel}, overhead {self.gpu_overhead}, " \
               f"embedding {'on' if self.embedding else 'off'}"


@dataclass(frozen=True)
class Pick:
    model: str
    reason: str                 # one line: why this model for this machine
    basis: str                  # Machine.basis when it was made
    inputs: str = ""            # Inputs.key when it was made
    made: float = 0.0           # wall-clock time, set when recorded


def gpu_budget(vram: int, inputs: Inputs) -> int:
    """Bytes of the card a chat model may take."""
    reserve = RESERVE + (EMBEDDING if inputs.embedding else 0) + inputs.gpu_overhead
    return int(vram - reserve - vram * HEADROOM)


def fits_gpu(entry: Entry, vram: int, inputs: Inputs) -> bool:
    return entry.need(inputs.context, inputs.parallel) <= gpu_budget(vram, inputs)


def _cpu_pick(m: Machine, inputs: Inputs) -> Entry:
    for ram, cores, name in CPU_TIERS:
        entry = BY_NAME[name]
        if m.ram >= ram and m.cores >= cores and entry.need(inputs.context, inputs.parallel) <= m.ram // 2:
            return entry
    return CATALOG[0]


def choose(m: Machine, inputs: Inputs = Inputs()) -> Pick:
    """The chat model for this machine, and why."""
    if m.gpu_name:
        fit = [e for e in CATALOG if fits_gpu(e, m.vram, inputs)]
        if fit:
            e = fit[-1]
            why = (f"largest that fits the {m.vram / GIB:.0f} GiB GPU ({m.gpu_name}): needs "
                   f"~{e.need(inputs.context, inputs.parallel) / GIB:.1f} GiB of "
                   f"{gpu_budget(m.vram, inputs) / GIB:.1f} GiB usable")
            return Pick(e.name, why, m.basis, inputs.key)
        e = _cpu_pick(m, inputs)
        return Pick(e.name, f"no model fits the {m.vram / GIB:.0f} GiB GPU fully: the CPU tier for "
                            f"{m.ram / GIB:.0f} GiB RAM and {m.cores} cores", m.basis, inputs.key)
    e = _cpu_pick(m, inputs)
    return Pick(e.name, f"no usable NVIDIA GPU: the CPU tier for {m.ram / GIB:.0f} GiB RAM and {m.cores} cores",
                m.basis, inputs.key)


def revisit(kept: Pick, m: Machine, inputs: Inputs) -> Pick | None:
    """A new pick when the machine or the inputs changed and the kept model no longer fits; None
    keeps it. A bigger card never leads to a bigger download by itself (doctor suggests it), and
    a GPU that was there and is gone (a driver being replaced, its library missing for a while)
    changes nothing: a CPU-sized pick then would stay small for good."""
    if (kept.basis, kept.inputs) == (m.basis, inputs.key):
        return None
    if not m.gpu_name and not kept.basis.startswith(NO_GPU):
        return None
    new = choose(m, inputs)
    if new.model == kept.model or not _bigger(kept.model, new.model):
        return None
    return Pick(new.model, f"{kept.model} no longer fits ({kept.basis} → {m.basis}): {new.reason}",
                m.basis, inputs.key)


def _bigger(a: str, b: str) -> bool:
    """Whether catalogue model a is larger than b (a model outside the catalogue: never)."""
    ea, eb = BY_NAME.get(a), BY_NAME.get(b)
    return ea is not None and eb is not None and ea.download > eb.download


def better(kept: str, m: Machine, inputs: Inputs) -> str | None:
    """A larger model this machine now fits than the kept one (for doctor), else None."""
    new = choose(m, inputs).model
    return new if _bigger(new, kept) else None


def tier_name(entry: Entry, inputs: Inputs = Inputs()) -> str:
    """The smallest common card that holds the entry fully: "GPU 12 GB"."""
    card = next((c for c in CARDS_GIB if fits_gpu(entry, c * GIB, inputs)), None)
    return f"GPU {card} GB" if card else "GPU > 80 GB"


def cpu_tier_of(name: str) -> str | None:
    """"CPU, 8 GiB RAM" for a model of CPU_TIERS, else None."""
    for ram, cores, model in CPU_TIERS:
        if model == name:
            if not ram:
                return "CPU, less RAM"
            return f"CPU, {ram // GIB}+ GiB RAM" + (f", {cores}+ cores" if cores > 2 else "")
    return None
