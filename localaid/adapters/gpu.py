"""The GPU through NVML (nvidia-ml-py, imported as pynvml), or a clear "no GPU" when there is none.

observe() never raises and is quick: a handful of NVML calls per device. A missing driver
library, an unloaded driver or no device all mean state "none" (run on the CPU); a GPU that fell
off the bus (NVML_ERROR_GPU_IS_LOST) means state "lost".
"""

from __future__ import annotations

import os
import sys
import threading

from localaid import fsutil, paths
from localaid.model import GpuDevice, GpuObs

DEVICES_STATE = os.path.join(paths.RUN_DIR, "devices.json")  # written by `localaid provision devices`


def _import_pynvml():
    try:
        import pynvml
    except ImportError:
        if paths.VENDOR_DIR not in sys.path:
            sys.path.append(paths.VENDOR_DIR)  # the .deb carries nvidia-ml-py here
        import pynvml
    return pynvml


class Gpu:
    def __init__(self, config=None):
        self._lock = threading.Lock()
        self._nvml = None
        self._initialised = False

    def _init(self):
        nv = self._nvml or _import_pynvml()
        self._nvml = nv
        if not self._initialised:
            nv.nvmlInit()
            self._initialised = True
        return nv

    def _shutdown(self) -> None:
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._initialised = False

    def observe(self, ollama_cgroup: str = "") -> GpuObs:
        with self._lock:
            obs = self._observe()
        marker = fsutil.read_json(DEVICES_STATE)
        changed = marker.get("changed_mono") if isinstance(marker, dict) else None
        from dataclasses import replace
        return replace(obs, ollama_pids=cgroup_pids(ollama_cgroup),
                       nodes_changed_at=float(changed) if isinstance(changed, (int, float)) else None)

    def _observe(self) -> GpuObs:
        try:
            nv = self._init()
        except ImportError as e:
            return GpuObs(state="none", error=f"nvidia-ml-py not importable: {e}")
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return GpuObs(state="none", error=_nvml_text(e))
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        devices = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                devices.append(GpuDevice(
                    index=i, name=_text(nv.nvmlDeviceGetName(h)), uuid=_optional(nv.nvmlDeviceGetUUID, h) or "",
                    memory_total=int(mem.total), memory_used=int(mem.used),
                    temperature=_optional(nv.nvmlDeviceGetTemperature, h, 0),
                    utilization=_optional(lambda x: nv.nvmlDeviceGetUtilizationRates(x).gpu, h),
                    compute_pids=tuple(p.pid for p in _optional(nv.nvmlDeviceGetComputeRunningProcesses, h) or ()),
                ))
        except Exception as e:
            lost = getattr(nv, "NVML_ERROR_GPU_IS_LOST", 15)
            if getattr(e, "value", None) == lost:
                self._shutdown()
                return GpuObs(state="lost", error="GPU is lost (fell off the bus)", driver=driver)
            self._shutdown()  # re-initialise next time: the driver may be reloading
            return GpuObs(state="error", error=_nvml_text(e), driver=driver)
        if not devices:
            return GpuObs(state="none", error="no NVIDIA GPU found", driver=driver)
        return GpuObs(state="ok", devices=tuple(devices), driver=driver)


def _optional(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml_text(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def cgroup_pids(control_group: str) -> tuple[int, ...]:
    """PIDs in a unit's cgroup (cgroup v2, or the name=systemd hierarchy of v1)."""
    if not control_group:
        return ()
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
        try:
            with open(f"{base}{control_group}/cgroup.procs") as f:
                return tuple(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return ()
