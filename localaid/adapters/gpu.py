"""The GPU through NVML (nvidia-ml-py, imported as pynvml), or a clear "no GPU" when there is none.

observe() never raises and is quick: a handful of NVML calls per device. A missing driver
library (NVMLError_LibraryNotFound), an unloaded driver or no device all mean state "none" (run
on the CPU), or "no-driver" when the PCI bus shows an NVIDIA card and no nvidia module is loaded
(procfs.gpu_without_driver: the driver is to be installed). A GPU that fell off the bus
(NVML_ERROR_GPU_IS_LOST, from a device handle or query or from nvmlInit itself, or
NVML_ERROR_UNKNOWN from nvmlInit once a GPU was seen) means state "lost". nvmlInit refused
with LIB_RM_VERSION_MISMATCH, or a library on disk (libnvidia-ml.so.<version>) of another release
than the running module (/proc/driver/nvidia/version: this process may still hold the old
library and see no error), is "mismatch": a driver update waiting for a reboot. nvmlInit refused
otherwise is "error", saying why: NO_PERMISSION is what the library answers when file permissions
keep it from the device nodes, UNKNOWN what it answers when a device policy (a unit's
DevicePolicy=, a container's device cgroup) does; the node is opened here too to tell which.

Xid errors (and "GPU unavailable" events, reported as Xid 79 when the driver gives no Xid) arrive
through an NVML event set that a daemon thread waits on with a short timeout
(nvmlEventSetWait_v2); events are queued and handed out by the next observe(), so the
supervisor's loop never waits for the GPU. Each observation also carries the counts by Xid
since start and the last few events. A GPU or driver that does not support these events stops
the watch for good, said once in the journal and in the observation (xid_watch).

Under WSL2 (procfs.platform) NVML is WSL's /usr/lib/wsl/lib/libnvidia-ml.so.1 (found through the
loader's cache, as WSL's ld.wsl.conf puts it there) reaching the GPU through /dev/dxg. It answers
only part of the API: what it does not support (utilisation, compute processes with older
Windows drivers: NOT_SUPPORTED or UNKNOWN) is "unavailable" (None), never "lost"; only
GPU_IS_LOST is, and an UNKNOWN from nvmlInit is not. It has no Xid events: the watch is not
started (xid_watch says why). Each observation names the platform.

Besides NVML, observe() reads two small files other parts of localaid write in /run/localaid:
devices.json (when the device nodes were last created or fixed: boot-race detection) and
resume.json (when the machine last resumed from sleep), and the PIDs of ollama.service's
cgroup, so the policy can tell whether Ollama's runner is among the GPU's compute processes.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import errno
import os
import sys
import threading
import time

from localaid import fsutil, log, paths, procfs
from localaid.records import GpuDevice, GpuObs, GpuProcess, XidEvent

DEVICES_STATE = os.path.join(paths.RUN_DIR, "devices.json")  # written by `localaid provision devices`
RESUME_STATE = os.path.join(paths.RUN_DIR, "resume.json")  # written by the system-sleep hook

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18  # "Driver/library version mismatch": a driver update before a reboot
NVML_ERROR_UNKNOWN = 999
EVENT_XID = 0x8  # nvmlEventTypeXidCriticalError
EVENT_GPU_UNAVAILABLE = 0x4000  # nvmlEventTypeGpuUnavailableError (newer drivers and bindings)
CTL_NODE = "/dev/nvidiactl"  # the node nvmlInit opens first
LOST_XID = 79  # "fell off the bus": what a GPU-unavailable event without an Xid stands for
LOST_TEXT = "GPU is lost (fell off the bus)"
XID_WATCH_UNSUPPORTED = "not supported by this GPU/driver"
XID_WATCH_WSL2 = "not available under WSL2 (its NVML reports no Xid events)"
EVENT_WAIT_MS = 500  # how long the event thread blocks in NVML at a time
EVENT_RETRY = 2.0  # pause after an NVML error in the event thread
# No library or no driver: NVML is asked again this much later, not every cycle (an attempt
# searches for the library and costs about half of an idle cycle's CPU). A driver loaded later
# restarts localaid anyway (supervisor.py), a lost GPU is not "none".
NONE_RECHECK = 10.0
VERSION_RECHECK = 2.0  # how often the library on disk is compared with the running module (a stat and a read)
MAX_QUEUED_XIDS = 100
LAST_XIDS = 10  # events kept for the status


def import_pynvml():
    """pynvml from the system, else the copy the .deb carries in /usr/lib/localaid/vendor."""
    try:
        import pynvml
    except ImportError:
        if paths.VENDOR_DIR not in sys.path:
            sys.path.append(paths.VENDOR_DIR)
        import pynvml
    return pynvml


class Gpu:
    def __init__(self, config=None, clock=time.monotonic, events: bool = True):
        self.clock = clock
        self._lock = threading.Lock()  # NVML init/shutdown and the device queries of observe()
        self._nvml = None
        self._initialised = False
        self.platform = procfs.platform()
        self._events_wanted = events and (config is None or getattr(config.gpu, "watch", True))
        self._xids: collections.deque[XidEvent] = collections.deque(maxlen=MAX_QUEUED_XIDS)
        self._xid_lock = threading.Lock()  # the queue, the counts and the last events
        self._xid_counts: collections.Counter[int] = collections.Counter()
        self._last_xids: collections.deque[XidEvent] = collections.deque(maxlen=LAST_XIDS)
        self._seen_gpu = False  # a device was listed once: an unknown init error then means "lost"
        self._none: tuple[float, GpuObs] | None = None  # (until, observation) after a failed init
        self._versions: tuple[float, str | None, str | None] | None = None  # (until, running, installed)
        # set when the event watch stopped for good; never started under WSL2
        self.xid_watch: str | None = XID_WATCH_WSL2 if self.platform == procfs.WSL2 else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.event_error: str | None = None  # last error of the event thread, for diagnostics

    # ---- NVML session ---------------------------------------------------------------------
    def _init(self):
        nv = self._nvml or import_pynvml()
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

    def close(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=EVENT_WAIT_MS / 1000 + 1)
        with self._lock:
            self._shutdown()

    # ---- observation ----------------------------------------------------------------------
    def observe(self, ollama_cgroup: str = "") -> GpuObs:
        try:
            with self._lock:
                obs = self._observe()
        except Exception as e:  # never raise into the loop
            obs = GpuObs(state="error", error=f"GPU watch: {type(e).__name__}: {e}")
        if obs.state in ("ok", "lost") and self._events_wanted:
            self._start_events()
        # Ollama's PIDs only matter next to a GPU's compute processes: no cgroup walk otherwise.
        pids = procfs.cgroup_pids(ollama_cgroup) if obs.state == "ok" else ()
        extra = {**self._drain(), "xid_watch": self.xid_watch, "ollama_pids": pids, "platform": self.platform,
                 "nodes_changed_at": _marker_time(DEVICES_STATE, "changed_mono")}
        resumed = _marker_time(RESUME_STATE, "mono")
        if resumed is not None:
            extra["resumed_at"] = resumed
        return dataclasses.replace(obs, **extra)

    def _observe(self) -> GpuObs:
        if self._none is not None and self.clock() < self._none[0]:
            return self._none[1]
        self._none = None
        try:
            nv = self._init()
        except ImportError as e:
            return self._no_gpu(GpuObs(state="none", error=f"nvidia-ml-py not importable: {e}"))
        except Exception as e:
            if self._lost_at_init(e):
                return GpuObs(state="lost", error=f"{LOST_TEXT}: NVML init: {_nvml_text(e)}")
            if getattr(e, "value", None) == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
                return self._hold(self._mismatch(()))
            refused = _init_refused(e, self.platform)
            if refused is not None:
                return GpuObs(state="error", error=refused)
            return self._no_gpu(GpuObs(state="none", error=_none_reason(e)))
        driver = _optional(lambda: _text(nv.nvmlSystemGetDriverVersion()))
        devices = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                procs = _processes(nv, h)
                devices.append(GpuDevice(
                    index=i, name=_text(nv.nvmlDeviceGetName(h)), uuid=_optional(lambda: _text(nv.nvmlDeviceGetUUID(h))) or "",
                    memory_total=int(mem.total), memory_used=int(mem.used),
                    temperature=_optional(nv.nvmlDeviceGetTemperature, h, 0),
                    utilization=_optional(lambda: int(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                    # None: NVML could not list them (not the same as "no process").
                    compute_pids=None if procs is None else tuple(p.pid for p in procs),
                    processes=procs,
                    compute_capability=_optional(lambda: tuple(nv.nvmlDeviceGetCudaComputeCapability(h))),
                ))
        except Exception as e:
            self._shutdown()  # initialise again next time: the driver may be reloading
            if getattr(e, "value", None) == NVML_ERROR_GPU_IS_LOST:
                return GpuObs(state="lost", error=LOST_TEXT, driver=driver)
            return GpuObs(state="error", error=_nvml_text(e), driver=driver)
        if not devices:
            return GpuObs(state="none", error="no NVIDIA GPU found", driver=driver)
        self._seen_gpu = True
        running, installed = self._driver_versions()
        if procfs.driver_versions_differ(running or driver, installed):
            # this process keeps the library it loaded; a process started now gets the new one
            return self._mismatch(tuple(devices))
        return GpuObs(state="ok", devices=tuple(devices), driver=driver)

    def _driver_versions(self) -> tuple[str | None, str | None]:
        """(running module, library on disk), read again every VERSION_RECHECK."""
        now = self.clock()
        if self._versions is None or now >= self._versions[0]:
            self._versions = (now + VERSION_RECHECK, procfs.running_driver_version(),
                              procfs.installed_library_version())
        return self._versions[1], self._versions[2]

    def _mismatch(self, devices: tuple[GpuDevice, ...]) -> GpuObs:
        """A driver updated under the running module (NVML code 18, or versions that differ on
        disk): the GPU is unusable to anything started now until a reboot; nothing to repair."""
        self._versions = None
        running, installed = self._driver_versions()
        return GpuObs(state="mismatch", devices=devices, driver=running, driver_installed=installed,
                      error=procfs.mismatch_text(running, installed))

    def _hold(self, obs: GpuObs) -> GpuObs:
        """`obs` is the answer until NONE_RECHECK from now: NVML is not asked every cycle."""
        self._none = (self.clock() + NONE_RECHECK, obs)
        return obs

    def _no_gpu(self, obs: GpuObs) -> GpuObs:
        """No usable driver: "none", or "no-driver" for an NVIDIA card without its driver.
        Asked again only NONE_RECHECK later."""
        missing = procfs.gpu_without_driver()
        if missing is not None:
            obs = GpuObs(state="no-driver", error=missing)
        return self._hold(obs)

    def _lost_at_init(self, e: Exception) -> bool:
        """An nvmlInit error that means the GPU fell off the bus, not "no GPU here": the
        recovery ladder can help, whereas a missing library or driver is "none"."""
        code = getattr(e, "value", None)
        if self.platform == procfs.WSL2:  # WSL's NVML answers UNKNOWN for much it does not support
            return code == NVML_ERROR_GPU_IS_LOST
        return code == NVML_ERROR_GPU_IS_LOST or (code == NVML_ERROR_UNKNOWN and self._seen_gpu)

    # ---- Xid events -----------------------------------------------------------------------
    def _drain(self) -> dict:
        """GpuObs fields: events since the last call, counts by Xid and the last events."""
        with self._xid_lock:
            out = {"xids": tuple(self._xids), "xid_counts": tuple(sorted(self._xid_counts.items())),
                   "last_xids": tuple(self._last_xids)}
            self._xids.clear()
        return out

    def _record(self, event: XidEvent) -> None:
        with self._xid_lock:
            self._xids.append(event)
            self._last_xids.append(event)
            self._xid_counts[event.xid] += 1

    def _start_events(self) -> None:
        if self.xid_watch is not None:
            return  # stopped for good (not supported)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._event_loop, name="nvml-events", daemon=True)
            self._thread.start()

    def _event_loop(self) -> None:
        """Wait for Xid events with a short timeout, queue them; re-register after any error but
        NOT_SUPPORTED, which ends the watch (retrying cannot help)."""
        nv = self._nvml
        event_set, uuids, inited = None, {}, False
        while not self._stop.is_set():
            try:
                if event_set is None:
                    nv.nvmlInit()  # a reference of our own: observe() may shut its one down
                    inited = True
                    event_set, uuids = self._register(nv)
                data = nv.nvmlEventSetWait_v2(event_set, EVENT_WAIT_MS)
            except Exception as e:
                code = getattr(e, "value", None)
                if code == NVML_ERROR_TIMEOUT:
                    continue
                self.event_error = _nvml_text(e)
                event_set, inited = self._release(nv, event_set, inited)
                if code == NVML_ERROR_NOT_SUPPORTED:
                    self.xid_watch = XID_WATCH_UNSUPPORTED
                    log.warning(f"GPU: Xid watch stopped: {XID_WATCH_UNSUPPORTED}", error=self.event_error)
                    return
                self._stop.wait(EVENT_RETRY)
                continue
            kind = int(data.eventType)
            if kind & (EVENT_XID | EVENT_GPU_UNAVAILABLE):
                xid = int(data.eventData) or (LOST_XID if kind & EVENT_GPU_UNAVAILABLE else 0)
                key = ctypes.cast(data.device, ctypes.c_void_p).value
                self._record(XidEvent(xid, uuids.get(key, ""), self.clock()))
        self._release(nv, event_set, inited)

    @staticmethod
    def _register(nv):
        event_set = nv.nvmlEventSetCreate()
        unavailable = getattr(nv, "nvmlEventTypeGpuUnavailableError", EVENT_GPU_UNAVAILABLE)
        uuids = {}
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuids[ctypes.cast(h, ctypes.c_void_p).value] = _text(nv.nvmlDeviceGetUUID(h))
                try:
                    nv.nvmlDeviceRegisterEvents(h, EVENT_XID | unavailable, event_set)
                except Exception as e:
                    if getattr(e, "value", None) != NVML_ERROR_NOT_SUPPORTED:
                        raise
                    nv.nvmlDeviceRegisterEvents(h, EVENT_XID, event_set)  # the combined mask refused
        except Exception:
            _optional(nv.nvmlEventSetFree, event_set)
            raise
        return event_set, uuids

    @staticmethod
    def _release(nv, event_set, inited):
        if event_set is not None:
            _optional(nv.nvmlEventSetFree, event_set)
        if inited:
            _optional(nv.nvmlShutdown)
        return None, False


def _optional(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _processes(nv, h) -> tuple[GpuProcess, ...] | None:
    """The device's compute processes; None when NVML cannot list them."""
    procs = _optional(nv.nvmlDeviceGetComputeRunningProcesses, h)
    if procs is None:
        return None
    return tuple(GpuProcess(int(p.pid), _bytes(getattr(p, "usedGpuMemory", None))) for p in procs)


def _bytes(v) -> int | None:
    """A memory figure, None for NVML's "not available" (all bits set) or none at all."""
    return int(v) if isinstance(v, int) and 0 <= v < 2**63 else None


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _nvml_text(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def _none_reason(e: Exception) -> str:
    code = getattr(e, "value", None)
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return "no NVIDIA GPU found (libnvidia-ml.so.1 not found: no NVIDIA driver installed)"
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return "no NVIDIA GPU found (NVIDIA driver not loaded)"
    return f"no NVIDIA GPU found ({_nvml_text(e)})"


def _init_refused(e: Exception, platform: str = procfs.LINUX) -> str | None:
    """Why nvmlInit was refused although a driver answers (an "error", not "no GPU"), or None
    when the failure means there is no usable driver. Under WSL2 the node NVML opens is
    /dev/dxg, not /dev/nvidiactl."""
    code = getattr(e, "value", None)
    node = procfs.DXG if platform == procfs.WSL2 else CTL_NODE
    if code == NVML_ERROR_NO_PERMISSION:
        return (f"NVML: {_nvml_text(e)}: the NVIDIA device nodes' permissions keep localaid out "
                "(gpu.devices.mode; `localaid doctor` shows who may open them)")
    if code != NVML_ERROR_UNKNOWN:
        return None
    err = _open_errno(node)
    why = f"; {node}: {os.strerror(err)}" if err else ""
    if err == errno.EPERM:
        why += " (localaid.service's device policy: a driver loaded after localaid started?)"
    if not why and not procfs.nvidia_gpus_on_pci():
        return None  # no card to speak of: "no NVIDIA GPU found (...)"
    return f"NVML: {_nvml_text(e)}{why}"


def _open_errno(path: str) -> int:
    """0 when `path` opens read-write (as NVML opens it), else the errno."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def _marker_time(path: str, key: str) -> float | None:
    doc = fsutil.read_json(path)
    value = doc.get(key) if isinstance(doc, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def observe_once(config) -> GpuObs:
    """One look through NVML, no events: for the commands and jobs that ask once."""
    gpu = Gpu(config, events=False)
    try:
        return gpu.observe()
    finally:
        gpu.close()


def machine_now(config):
    """(catalog.Machine or None, the GpuObs) for `localaid models --suggest` and doctor, sized as
    the daemon sizes it (policy_models.machine)."""
    from localaid.policy_models import machine
    from localaid.records import Observation
    gobs = observe_once(config) if config.gpu.watch else GpuObs(state="off")
    return machine(Observation(now=0.0, gpu=gobs, host=procfs.host_facts())), gobs
