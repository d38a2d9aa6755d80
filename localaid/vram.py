"""VRAM arithmetic and the words for it: does a model fit this card? Pure, no I/O."""

from __future__ import annotations

MIB, GIB = 2**20, 2**30
CARD_SIZES_GB = (4, 6, 8, 12, 16, 20, 24, 32, 48, 80, 96)  # common cards
NO_GPU = "no NVIDIA GPU: runs on CPU"
NOT_PULLED = "not pulled yet: size unknown"

def vram_advice(model_size_bytes: int, gpu_total_bytes: int) -> tuple[bool, str]:
    """Does a model of this size run fully on a GPU with this much memory? Rule of thumb: the
    weights, plus KV cache and compute buffers of about half the weights at Ollama's default
    context, plus ~1 GiB of CUDA context. An 8B model of 5.2 GB wants ~8.3 GiB: a 12 GB card."""
    need = int(model_size_bytes * 1.5 + GIB)
    fits = need <= gpu_total_bytes
    size = f"{model_size_bytes / 1e9:.1f} GB"
    card = f"{round(gpu_total_bytes / GIB)} GB"
    if fits:
        return True, f"{size} model fits this {card} GPU (needs ~{need / GIB:.1f} GiB with KV cache)"
    largest = max(0, (gpu_total_bytes - GIB) / 1.5)
    bigger = next((c for c in CARD_SIZES_GB if c * GIB >= need), None)
    text = (f"{size} model needs ~{need / GIB:.1f} GiB of VRAM with KV cache; this {card} GPU would run part "
            f"of it on the CPU (several times slower). Models up to {largest / 1e9:.1f} GB fit")
    if bigger:
        text += f", or use a {bigger} GB card"
    return False, text


def catalog_advice(entry, gpu_total: int, inputs) -> tuple[bool, str]:
    """The same question for a model of the catalogue (catalog.py), whose KV cache per token is
    known: the arithmetic `ollama.models: auto` picks by, so that the two never disagree."""
    from localaid.catalog import fits_gpu, gpu_budget
    need, usable = entry.need(inputs.context, inputs.parallel), gpu_budget(gpu_total, inputs)
    card = f"{round(gpu_total / GIB)} GB"
    if fits_gpu(entry, gpu_total, inputs):
        return True, f"{entry.name} fits this {card} GPU (needs ~{need / GIB:.1f} GiB of {usable / GIB:.1f} GiB usable)"
    return False, (f"{entry.name} needs ~{need / GIB:.1f} GiB, {usable / GIB:.1f} GiB of this {card} GPU is usable: "
                   f"part of it would run on the CPU (localaid models --suggest)")


def vram_note(size: int, gpu_total: int | None, name: str | None = None, inputs=None) -> tuple[bool | None, str]:
    """(fits, words) for a model of `size` bytes (0: not pulled) on a GPU of `gpu_total` bytes
    (None: no usable NVIDIA GPU). fits is None when it cannot be said. A model of the catalogue
    (by `name`) is judged by its own figures at `inputs` (catalog.Inputs), any other by the rule
    of thumb of vram_advice."""
    from localaid.catalog import BY_NAME, Inputs
    if not size:
        return None, NOT_PULLED
    if gpu_total is None:
        return None, NO_GPU
    entry = BY_NAME.get(name or "")
    if entry is not None:
        return catalog_advice(entry, gpu_total, inputs or Inputs())
    return vram_advice(size, gpu_total)
