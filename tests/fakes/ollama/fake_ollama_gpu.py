"""The fake Ollama's GPU: discovery once at start, VRAM placement, losing the GPU after start.

What real Ollama does, as the fake `ollama serve` (tests/fakes/ollama/ollama) plays it:

- GPU discovery happens once, at start. The GPU is usable when the device nodes open
  (/dev/nvidiactl, /dev/nvidia<N> per GPU, /dev/nvidia-uvm; in $FAKE_NVML_DEV if set; ENXIO, a
  node without a driver behind it as in the test containers, counts as opened; EACCES, EPERM,
  ENOENT do not; under WSL2, where the CUDA library Ollama loads is WSL's
  (/usr/lib/wsl/lib/libcuda.so.1, or $FAKE_OLLAMA_WSL_LIBCUDA), the only node is /dev/dxg), the fake NVML state (FAKE_NVML_STATE) shows a working driver with a GPU, and
  CUDA initialises: it does not while the faults file says "cuda_broken" (a CUDA state broken by
  suspend/resume until nvidia_uvm is reloaded), nor for as many starts as the file
  `discovery-fail` beside the faults file counts (each such start takes one off: "cuda driver
  library init failure: 999", the transient failure behind "Ollama on CPU after reboot"). A GPU
  that appears later is not used until a restart.
- A model is placed whole in VRAM when it fits, else as many of its layers as fit (a partial
  offload: 0 < size_vram < size), after Ollama's own reserve (457 MiB plus OLLAMA_GPU_OVERHEAD),
  in what the card has free: its total less what other programs use ("memory_used") and what this
  process already holds. What it holds is published in the NVML state's "processes_file" as
  "PID BYTES", so the fake NVML's used memory and compute processes follow it.
- Its CUDA backend needs a recent enough driver (the fake NVML's "driver"): from release 0.30.11
  (built with CUDA 12.8) 550, and 570 for compute capability 5.0-6.2 ("cc_major"/"cc_minor"),
  531 before (Ollama's docs/gpu.mdx). With an older driver it does not fail: it says so in its
  output and runs on the CPU, as the real one ignores such a GPU.
- The GPU can be lost after start: the NVML state says lost (or the driver went away), the
  faults file says "cuda_broken", or "cuda_error": TEXT appeared in it after this process
  started. The runner's CUDA context dies: a "CUDA error: ..." line goes to the output (the
  journal), the VRAM is freed (published), models loaded on the GPU stay listed by /api/ps until
  a request uses them, which then fails with the CUDA error and unloads the model; every later
  load goes to the CPU until the process is restarted.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile

MIN_FREE = 457 * 2**20  # what Ollama keeps free on a GPU (ml/device.go MinimumMemory)
DEFAULT_TOTAL = 12884901888  # the fake NVML's default memory_total
LAYERS = 33  # a 7-8B model's repeating layers plus the output layer: offload granularity
CUDA_INIT_FAILURE = "cuda driver library init failure: 999"
WSL_LIBCUDA = "/usr/lib/wsl/lib/libcuda.so.1"  # WSL's CUDA driver library: it reaches the GPU through /dev/dxg
DEFAULT_CUDA_ERROR = "unspecified launch failure"


def read_json(path: str):
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_atomic(path: str, text: str) -> None:
    """Replace `path` (never half-written); quietly nothing where the directory is not ours."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass


def _opens(path: str) -> tuple[bool, str]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
    except OSError as e:
        # ENXIO/ENODEV: the node reached the kernel, no driver behind it (a misc minor nobody registered)
        return e.errno in (errno.ENXIO, errno.ENODEV), f"{path}: {os.strerror(e.errno)}"
    return True, f"{path}: ok"


def _driver_too_old(version: str, state: dict) -> str | None:
    """Real Ollama's words when the driver is older than its CUDA build needs (None: new enough)."""
    v = tuple(int(n) for n in version.split("-")[0].split(".")[:3] if n.isdigit())
    if not v or v == (0, 0, 0):
        return None
    old_cc = (5, 0) <= (int(state.get("cc_major", 8)), int(state.get("cc_minor", 9))) <= (6, 2)
    need = (570 if old_cc else 550) if v >= (0, 30, 11) else 531
    driver = str(state.get("driver", "550.54.14"))
    if int(driver.split(".")[0]) >= need:
        return None
    return f"NVIDIA driver {driver} is too old: CUDA backend requires driver {need} or newer; using CPU"


class Gpu:
    """This process's view of the GPU. `forced`: usable or not without looking (in-process tests)."""

    def __init__(self, nvml_state: str, faults_file: str, started: float, forced: bool | None = None,
                 version: str = "0.0.0"):
        self.nvml_state = nvml_state
        self.version = version
        self.faults_file = faults_file
        self.started = started  # wall clock: a "cuda_error" written later hits this process
        self.usable = bool(forced)
        self.forced = forced is not None
        self.lost: str | None = None  # the CUDA error text once lost after start
        self.why = "forced" if self.forced else "not discovered yet"

    # ---- at start
    def discover(self, faults: dict) -> bool:
        if self.forced:
            return self.usable
        reasons = []
        state = read_json(self.nvml_state)
        count = int(state.get("count", 1) or 0) if state else 0
        dev = os.environ.get("FAKE_NVML_DEV") or "/dev"  # as the NVML double: plain files outside containers
        nodes = ["nvidiactl"] + [f"nvidia{i}" for i in range(max(count, 1))] + ["nvidia-uvm"]
        if os.path.exists(os.environ.get("FAKE_OLLAMA_WSL_LIBCUDA") or WSL_LIBCUDA):
            nodes = ["dxg"]
        for node in nodes:
            ok, why = _opens(os.path.join(dev, node))
            reasons.append(why)
            if not ok:
                return self._found(False, reasons)
        if state is None:
            return self._found(False, reasons + [f"no NVML ({self.nvml_state} unreadable)"])
        if state.get("lost") or state.get("driver_loaded") is False or state.get("init_error") or not count:
            return self._found(False, reasons + ["NVML reports no usable GPU"])
        old = _driver_too_old(self.version, state)
        if old:
            return self._found(False, reasons + [old])
        if faults.get("cuda_broken") or self._take_discovery_failure():
            return self._found(False, reasons + [CUDA_INIT_FAILURE])
        return self._found(True, reasons + [f"NVML: {count} GPU(s)"])

    def _found(self, usable: bool, reasons: list[str]) -> bool:
        self.usable, self.why = usable, "; ".join(reasons)
        return usable

    def _take_discovery_failure(self) -> bool:
        path = os.path.join(os.path.dirname(self.faults_file), "discovery-fail")
        try:
            with open(path) as f:
                left = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return False
        if left <= 0:
            return False
        write_atomic(path, f"{left - 1}\n")
        return True

    def banner(self) -> tuple[str, dict]:
        state = read_json(self.nvml_state) or {}
        if self.usable:
            total = int(state.get("memory_total", DEFAULT_TOTAL))
            return "inference compute", {"id": state.get("uuid", "GPU-fake-0"), "library": "cuda",
                                         "total": f"{total / 2**30:.1f} GiB", "detail": self.why}
        return "no compatible GPUs were discovered", {"detail": self.why}

    # ---- placement
    def on_gpu(self) -> bool:
        return self.usable and self.lost is None

    def place(self, size: int, mine: int) -> int:
        """Bytes of a model of `size` that go to VRAM, this process already holding `mine`."""
        if not self.on_gpu():
            return 0
        state = read_json(self.nvml_state)
        if state is None or "memory_total" not in state:
            return size  # nothing says how big the card is (in-process tests): it fits
        overhead = int(os.environ.get("OLLAMA_GPU_OVERHEAD") or 0)
        free = int(state["memory_total"]) - int(state.get("memory_used", 0)) - mine - MIN_FREE - overhead
        if free >= size:
            return size
        layer = -(-size // LAYERS)
        return max(0, min(size, free // layer * layer))

    def publish(self, held: int) -> None:
        """Say in the NVML state's processes_file what this process holds on the GPU."""
        state = read_json(self.nvml_state) or {}
        path = state.get("processes_file")
        if isinstance(path, str) and path:
            write_atomic(path, f"{os.getpid()} {held}\n" if held > 0 else "")

    # ---- after start
    def check_lost(self, faults: dict) -> str | None:
        """The CUDA error when the GPU is lost now (first time only), else None."""
        if not self.on_gpu() or self.forced:
            return None
        state = read_json(self.nvml_state)
        text = None
        if state is None or state.get("lost") or state.get("driver_loaded") is False:
            text = DEFAULT_CUDA_ERROR
        elif faults.get("cuda_broken"):
            text = DEFAULT_CUDA_ERROR
        elif faults.get("cuda_error"):
            try:
                fresh = os.stat(self.faults_file).st_mtime >= self.started
            except OSError:
                fresh = False
            text = str(faults["cuda_error"]) if fresh else None
        if text is None:
            return None
        self.lost = text
        print(f"CUDA error: {text}", file=sys.stderr, flush=True)
        return text
