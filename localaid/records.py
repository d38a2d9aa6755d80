"""Plain data passed between observe → decide → act. No behaviour, no I/O.

Times are seconds on the monotonic clock (CLOCK_MONOTONIC, the one systemd's *Monotonic unit
properties use), so grace periods can compare `now` with the moment systemd saw a unit start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

EMPTY: Mapping = MappingProxyType({})

# Service keys used everywhere (status, history, config); the unit names they map to.
OLLAMA = "ollama"
WEBUI = "open-webui"
HTTPS = "https"  # nginx in front of Open WebUI (webui.tls)
UNITS = {OLLAMA: "ollama.service", WEBUI: "open-webui.service", HTTPS: "localaid-https.service"}

# What STATUS, `localaid status` and `localaid doctor` say about an NVIDIA card without its driver.
NO_DRIVER = "NVIDIA GPU without driver: install nvidia-driver (non-free) and reboot"

# Short-lived units that do privileged work for the supervisor (see units/).
JOB_UNITS = {
    "devices": "localaid-devices.service",
    "gpu-recover": "localaid-gpu-recover.service",
    "ollama-setup": "localaid-ollama-setup.service",
    "webui-setup": "localaid-webui-setup.service",
}


# ---------------------------------------------------------------------------------- observe
@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str = ""  # loaded | not-found | masked | error
    active_state: str = ""  # active | activating | deactivating | inactive | failed | reloading
    sub_state: str = ""  # running | auto-restart | exited | dead | failed | start ...
    main_pid: int = 0
    n_restarts: int = 0
    result: str = ""  # success | exit-code | signal | core-dump | watchdog | start-limit-hit ...
    control_group: str = ""
    active_enter_mono: float = 0.0
    job: bool = False  # a start/stop job is queued or running

    @property
    def exists(self) -> bool:
        return self.load_state == "loaded"


@dataclass(frozen=True)
class Probe:
    """One HTTP request's outcome. `error` is short and human: "timeout after 1 s", "HTTP 500"."""
    ok: bool
    latency: float = 0.0
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    name: str
    size: int  # bytes
    size_vram: int  # bytes; < size means (partly) on the CPU
    expires_at: float | None = None  # wall clock (epoch seconds) when Ollama unloads it; None: unknown

    @property
    def on_gpu(self) -> bool:
        return self.size > 0 and self.size_vram >= self.size


@dataclass(frozen=True)
class ServiceObs:
    name: str  # OLLAMA | WEBUI
    unit: UnitState | None  # None when systemd could not be asked
    unit_error: str | None = None
    probe: Probe | None = None  # liveness (ollama GET /, open-webui /health); None if not probed
    ready: Probe | None = None  # open-webui /ready during start-up
    models: tuple[LoadedModel, ...] | None = None  # ollama /api/ps; None when not read
    cpu_seconds: float | None = None  # CPU its cgroup has used; read only while its probe fails
    version: str | None = None  # ollama: /api/version, asked once per start of its unit
    runners: "RunnerObs | None" = None  # ollama: its model runners; read only while a model is loaded


@dataclass(frozen=True)
class RunnerObs:
    """Ollama's model runners: the processes of its cgroup other than the server (a
    `llama-server` or `ollama runner` child per loaded model)."""
    pids: tuple[int, ...]
    cpu_seconds: float  # their CPU time so far, together
    names: tuple[str, ...] = ()  # their process names, for the journal


@dataclass(frozen=True)
class CanaryObs:
    """How the last runner canary ended (a one-token request to each loaded model)."""
    sent: float  # the policy's `now` when it asked for it: which canary this answers
    ok: bool
    timed_out: bool = False  # the requests did not end within health.runner_watchdog.canary_timeout
    detail: str = ""  # "qwen3:8b: timeout after 30 s"


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory: int | None = None  # bytes of GPU memory; None when the driver does not say


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    uuid: str
    memory_total: int
    memory_used: int
    temperature: int | None = None
    utilization: int | None = None  # percent
    compute_pids: tuple[int, ...] | None = ()  # None: NVML cannot list them
    processes: tuple[GpuProcess, ...] | None = ()  # the same compute processes, with their memory
    compute_capability: tuple[int, int] | None = None  # CUDA's (major, minor); None when NVML does not say


@dataclass(frozen=True)
class XidEvent:
    xid: int
    uuid: str
    at: float  # monotonic


@dataclass(frozen=True)
class GpuObs:
    # ok | none (no NVIDIA driver/GPU) | no-driver (an NVIDIA card, its driver not loaded) | lost |
    # mismatch (a driver update installed under the running module: reboot) | error | off (watch disabled)
    state: str = "none"
    devices: tuple[GpuDevice, ...] = ()
    error: str | None = None
    driver: str | None = None  # the running driver's version
    driver_installed: str | None = None  # the driver library's version on disk, when it differs
    xids: tuple[XidEvent, ...] = ()  # events since the previous observation
    ollama_pids: tuple[int, ...] = ()  # PIDs in ollama.service's cgroup (for compute-process checks)
    nodes_changed_at: float | None = None  # last time device nodes appeared or were fixed
    resumed_at: float | None = None  # last resume from sleep (the system-sleep hook)
    xid_counts: tuple[tuple[int, int], ...] = ()  # (xid, events) since localaid started, by xid
    last_xids: tuple[XidEvent, ...] = ()  # the most recent events, oldest first
    xid_watch: str | None = None  # why Xid events are not watched (e.g. not supported), None when fine
    platform: str = "linux"  # linux | wsl2 (procfs.platform: the GPU through /dev/dxg, reset only from Windows)


@dataclass(frozen=True)
class JobObs:
    """A provisioning job: its unit's state plus what it reported in /run/localaid/progress."""
    name: str  # key of JOB_UNITS
    unit: UnitState | None
    text: str | None = None
    fraction: float | None = None
    progress_state: str | None = None  # running | done | failed | blocked (needs the admin)

    @property
    def at_work(self) -> bool:
        """Its unit is queued to start or starting (a oneshot is "activating" while it runs)."""
        return self.unit is not None and (self.unit.job or self.unit.active_state == "activating")


@dataclass(frozen=True)
class NodeObs:
    """One Ollama node of a UI host (webui.ollama_urls): its probe, and whether Open WebUI uses
    it (the connection's `enable` flag; None when Open WebUI's settings could not be read)."""
    url: str
    probe: Probe | None
    in_use: bool | None = None
    ours: bool = False  # its connection carries localaid's mark: localaid switched it off


@dataclass(frozen=True)
class HostFacts:
    ram: int  # bytes (MemTotal)
    cores: int  # CPUs this process may run on


@dataclass(frozen=True)
class DiskObs:
    """Free space where something localaid runs keeps its data (statvfs)."""
    what: str  # models | webui
    path: str
    free: int | None  # bytes an unprivileged writer may use; None when the path cannot be read
    total: int | None = None
    fs: int = 0  # file system id: two paths on one disk are said once


@dataclass(frozen=True)
class BackupObs:
    """What backup-status.json says (wall-clock times, seconds since the epoch)."""
    wall: float  # the time it was read
    good_at: float | None = None  # the last good backup
    good_size: int | None = None
    last_at: float | None = None  # the last run, good or not
    last_error: str | None = None  # why the last run failed (None: it did not)
    since: float | None = None  # backups first scheduled here


@dataclass(frozen=True)
class TlsObs:
    """The certificate localaid-https.service serves (wall-clock times, seconds since the epoch)."""
    wall: float  # the time it was read
    not_after: float | None = None  # None: no readable certificate
    fingerprint: str | None = None  # SHA-256, "AB:CD:…"
    own: bool = False  # not this host's CA's: the administrator's (webui.tls.cert_file) or a node's
    error: str | None = None  # why it could not be read
    source: str = "local-ca"  # local-ca | own | node (provision/https/service.py source())
    ca_fingerprint: str | None = None  # SHA-256 of the CA to trust (local-ca, node), for `localaid status`


@dataclass(frozen=True)
class Observation:
    now: float
    services: Mapping[str, ServiceObs] = field(default_factory=lambda: EMPTY)
    gpu: GpuObs = field(default_factory=GpuObs)
    jobs: Mapping[str, JobObs] = field(default_factory=lambda: EMPTY)
    maintenance: frozenset[str] = frozenset()  # services an upgrade is working on: hands off
    generation: int = 1  # bumped by the supervisor at every (re)load of the configuration
    in_flight: frozenset[str] = frozenset()  # actions still running beside the loop, e.g. "preload:llama3"
    exposed: bool = False  # ollama.allow_from is configured, and this host was found not to enforce it
    nodes: tuple[NodeObs, ...] = ()  # a UI host's Ollama nodes, in webui.ollama_urls order
    nodes_error: str | None = None  # why Open WebUI's connection settings could not be read
    nodes_differ: bool = False  # Open WebUI's connection list is not webui.ollama_urls
    host: HostFacts | None = None  # RAM and cores; read only while ollama.models: auto needs them
    backup: BackupObs | None = None  # None: backups are off (backup.enabled or webui.enabled false)
    disks: tuple[DiskObs, ...] = ()  # Ollama's models dir, Open WebUI's data dir
    canary: CanaryObs | None = None  # the runner canary that ended last (policy_runner)
    tls: TlsObs | None = None  # None: webui.tls is off


# ----------------------------------------------------------------------------------- decide
@dataclass(frozen=True)
class Action:
    kind: str  # restart | kill-restart | start | start-job | preload | gpu-step | choose-model
    target: str  # unit name, job name or model name
    cause: str  # hung | crash-loop | failed | cpu-fallback | boot-race | gpu-lost | xid | provision ...
    evidence: str = ""
    service: str | None = None  # the service key the action is for (OLLAMA / WEBUI)
    data: object = None  # what the action needs beyond words (choose-model: the catalog.Pick)


@dataclass(frozen=True)
class ServiceHistory:
    state: str = "unknown"  # ok | starting | failing | restarting | degraded | stopped | missing | waiting | unknown
    reason: str = ""  # human words for state
    failures: int = 0  # consecutive failed liveness probes
    failing_since: float | None = None
    last_ok: float | None = None
    restarts: tuple[float, ...] = ()  # restarts inside the budget window: ours and systemd's
    crashes: tuple[float, ...] = ()  # the ones systemd did after the service exited
    backoff: float = 0.0  # current backoff step (0 = next restart may happen at once)
    next_attempt: float = 0.0  # no restart before this time
    last_action: str | None = None
    seen_n_restarts: int = 0  # systemd's NRestarts at last look
    cpu_sample: tuple[float, float] | None = None  # (when, CPU seconds) at the last failed probe
    busy_at: float | None = None  # last time its cgroup was seen working while it did not answer


@dataclass(frozen=True)
class JobHistory:
    generation: int = 0  # configuration generation the job last ran for
    started_at: float = 0.0
    failures: int = 0  # consecutive failed runs
    next_attempt: float = 0.0
    state: str = "idle"  # idle | started | done | failed | blocked (no retry until the config changes)


@dataclass(frozen=True)
class NodeHistory:
    state: str = "ok"  # ok | failing | out (taken out of Open WebUI's use)
    failures: int = 0  # consecutive failed probes
    oks: int = 0  # consecutive answered probes
    since: float | None = None  # failing: first failed probe; out: when it was taken out
    reason: str = ""  # the last probe's error
    hold: float = 0.0  # how long it stays out once it answers again (grows while it flaps)
    returned_at: float | None = None  # when it was last put back
    outages: tuple[float, ...] = ()  # when it was taken out, within policy_nodes.FLAP_WINDOW
    ours: bool = False  # localaid disabled its connection (only those are enabled again)


@dataclass(frozen=True)
class RunnerHistory:
    """What the wedged-runner watchdog (policy_runner) remembers of Ollama's runners."""
    pids: tuple[int, ...] = ()  # the runners these samples are of (a change starts over)
    cpu_sample: tuple[float, float] | None = None  # (when, their CPU seconds) at the last look
    worked_at: float | None = None  # last time they were seen working (CPU, or the GPU busy)
    armed: bool = False  # they worked since the last canary answered: one canary is owed once quiet
    canary_sent: float | None = None  # the canary on its way (its `now`), None when none
    pending: tuple[str, ...] = ()  # loaded models still to be asked this round, one at a time
    worked_during_canary: bool = False  # they worked while it was on its way: busy, not wedged
    wedged: str | None = None  # the evidence, once called wedged: kept until they work or are replaced


@dataclass(frozen=True)
class History:
    services: Mapping[str, ServiceHistory] = field(default_factory=lambda: EMPTY)
    jobs: Mapping[str, JobHistory] = field(default_factory=lambda: EMPTY)
    warm_attempts: Mapping[str, float] = field(default_factory=lambda: EMPTY)  # model -> last preload request
    warm_process: tuple[int, float] = (0, 0.0)  # (MainPID, start) of the Ollama those attempts were made to
    gpu: Mapping[str, object] = field(default_factory=lambda: EMPTY)  # owned by the GPU policy
    nodes: Mapping[str, NodeHistory] = field(default_factory=lambda: EMPTY)  # owned by policy_nodes
    runner: RunnerHistory = field(default_factory=RunnerHistory)  # owned by policy_runner
    extra: Mapping[str, object] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str
    reason: str
    detail: str = ""  # e.g. ":3000", "2 models warm"
    restarts_in_window: int = 0


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    history: History
    status_line: str
    healthy: bool
    services: tuple[ServiceStatus, ...] = ()
    notes: tuple[str, ...] = field(default=())  # journal lines about state changes (not actions)
    # Seconds until the next cycle: health.interval, or 0 while a service's probes are timing out
    # (each such probe already waited health.timeout; the next one goes at once).
    recheck: float | None = None


# ----------------------------------------------------------------------------------- doctor
@dataclass(frozen=True)
class Check:
    """One finding of `localaid doctor`; every area (devices, Ollama, Open WebUI) returns a list."""
    name: str
    ok: bool | None  # True ok, None warning, False needs fixing
    message: str
    advice: str = ""
    skipped: bool = False  # not run here (e.g. needs root): shown as [skip], never a failure
