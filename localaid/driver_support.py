"""Which NVIDIA driver the installed Ollama needs: one table, kept here, with its source (pure).

Source: Ollama's docs/gpu.mdx ("Hardware support"). Until 0.30.10 it read "compute capability
5.0+ and driver version 531 and newer"; from 0.30.11, built with CUDA 12.8: "driver version 550
and newer. Nvidia GPUs with compute capability 5.0 through 6.2 require driver version 570 or
newer". With an older driver Ollama does not fail: it ignores the GPU and runs on the CPU, which
localaid would otherwise take for a CPU fallback to heal by restarts.
"""

from __future__ import annotations

import re

# (first Ollama release, minimum driver, minimum driver for compute capability 5.0-6.2), newest first
NEEDS = (
    ((0, 30, 11), 550, 570),
    ((0, 0, 0), 531, 531),
)
OLD_CC = ((5, 0), (6, 2))  # the compute capabilities that need the higher minimum


def _numbers(text: str | None) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text or "")[:3])


def needed_driver(ollama_version: str | None, capabilities) -> int | None:
    """The lowest driver major this Ollama runs its CUDA backend on, for these GPUs' compute
    capabilities ((major, minor) or None each); None when Ollama's version is unknown."""
    v = _numbers(ollama_version)
    if not v or v == (0, 0, 0):  # unknown, or a development build
        return None
    for first, minimum, minimum_old_cc in NEEDS:
        if v >= first:
            old = any(cc is not None and OLD_CC[0] <= tuple(cc) <= OLD_CC[1] for cc in capabilities)
            return minimum_old_cc if old else minimum
    return None


def too_old(ollama_version: str | None, driver: str | None, capabilities) -> str | None:
    """STATUS's words when the running driver is older than the installed Ollama needs, else None."""
    need = needed_driver(ollama_version, capabilities)
    have = _numbers(driver)
    if need is None or not have or have[0] >= need:
        return None
    return (f"NVIDIA driver {driver} too old for Ollama {ollama_version} (needs {need} or newer): "
            f"running on CPU")
