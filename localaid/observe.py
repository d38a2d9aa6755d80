"""Observe: gather one Observation, every source in parallel, bounded by a deadline.

A source that has not answered by the deadline counts as failed for this cycle ("timeout"), and
is not asked again while its earlier call is still stuck, so a hung D-Bus or HTTP peer can never
stall the loop or pile up threads.

Idle, a cycle costs no D-Bus call (unit states come from a UnitWatch that systemd's signals keep
current, with a full read every 30 s) and no new connection (each probe keeps its HTTP/1.1
connection). A service that is not plainly ok has its unit read every cycle, as does one whose
probe just failed (in the same cycle): whenever the policy looks closely, the details are fresh.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import MappingProxyType

from localaid import fsutil, log, paths, procfs, progress
from localaid.adapters import http
from localaid.adapters.systemd import NOT_FOUND, make_state
from localaid.observe_nodes import NodeTrust, differ
from localaid.observe_tls import TlsWatch, answered
from localaid.records import (
    HTTPS, JOB_UNITS, OLLAMA, UNITS, WEBUI, BackupObs, DiskObs, GpuObs, JobObs, NodeObs, Observation, Probe, ServiceObs,
    UnitState,
)


class Observer:
    def __init__(self, systemd, gpu=None, workers: int = 6, clock=time.monotonic):
        self.systemd = systemd
        self.gpu = gpu
        self.clock = clock
        self._host = None  # records.HostFacts, once read
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="observe")
        self._pending: dict[str, Future] = {}
        self.units = UnitWatch(systemd, list(UNITS.values()) + list(JOB_UNITS.values()),
                               services=UNITS.values(), clock=clock)
        self._clients: dict[str, http.Client] = {}  # probe key -> kept-alive connection
        self._conns: tuple[dict | None, str | None] = (None, None)  # Open WebUI's connections, last read
        self._version: tuple[float | None, str | None] = (None, None)  # (Ollama's start, its version)
        self.tls = TlsWatch()  # webui.tls: the proxy probe's trust, the served certificate
        self.trust = NodeTrust()  # a UI host's https:// nodes: the site CA, their tokens

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.units.close()
        for c in self._clients.values():
            c.close()

    def _submit(self, key: str, fn, *args) -> Future | None:
        old = self._pending.get(key)
        if old is not None and not old.done():
            return None  # still stuck from an earlier cycle
        fut = self.pool.submit(fn, *args)
        self._pending[key] = fut
        return fut

    def _probe(self, key: str, url: str, timeout: float, tls=None, headers=None) -> Future | None:
        client = self._clients.get(key)
        if client is None or client.url != url or client.tls is not tls or client.headers != headers:
            old = self._pending.get(key)
            if client is not None and (old is None or old.done()):
                client.close()
            client = self._clients[key] = http.Client(url, tls=tls, headers=headers)
        return self._submit(key, client.request, timeout)

    def _nodes(self, urls, probe) -> tuple[tuple[NodeObs, ...], str | None, bool]:
        """The nodes' probes, with Open WebUI's `enable` flags as last read (a read that did
        not end this cycle keeps the previous one: signing in can take a second)."""
        fut = self._pending.get("conns")
        if urls and fut is not None and fut.done():
            try:
                self._conns = (fut.result(), None)
            except Exception as e:  # AdminError: words for STATUS
                self._conns = (None, str(e) or type(e).__name__)
        conns, error = self._conns if urls else (None, None)
        nodes = []
        for u in urls:
            in_use, ours, _ = (conns or {}).get(u, (None, False, None))  # not among Open WebUI's
            nodes.append(NodeObs(u, probe(f"node:{u}")[0], in_use, ours))
        return tuple(nodes), error, differ(urls, conns, self.trust.tokens(urls))

    def _probe_nodes(self, futs, urls, timeout: float, admin) -> None:
        """A UI host's Ollama nodes, reached as Open WebUI reaches them (TLS, token), and its connections."""
        self.trust.refresh(urls)
        for url in urls:
            futs[f"node:{url}"] = self._probe(f"node:{url}", url.rstrip("/") + "/api/version", timeout,
                                              *self.trust.probe_args(url))
        if urls and admin is not None:
            futs["conns"] = self._submit("conns", admin.connections)

    def _drop_clients(self, keep) -> None:
        """Close the connections of probes not made this cycle (Open WebUI's /ready once it is up)."""
        for key in [k for k in self._clients if k not in keep]:
            old = self._pending.get(key)
            if old is None or old.done():
                self._clients.pop(key).close()

    def observe(self, config, generation: int = 1, in_flight: frozenset[str] = frozenset(),
                ollama_cgroup: str = "", webui_starting: bool = False,
                refresh: frozenset[str] = frozenset(), admin=None, canary=None) -> Observation:
        hc = config.health
        started = self.clock()
        local = config.ollama.enabled  # false: a UI host, no Ollama of its own
        tls_on = config.proxy_probe is not None  # webui.tls, or a GPU node's ollama.expose
        units = ([UNITS[OLLAMA]] if local else []) + ([UNITS[WEBUI]] if config.webui.enabled else []) + \
            ([UNITS[HTTPS]] if tls_on else [])
        jobs = list(JOB_UNITS.items())
        futs: dict[str, Future | None] = {
            "units": self._submit("units", self.units.states, units + [u for _, u in jobs], refresh)}
        if local:
            futs["ollama"] = self._probe("ollama", config.ollama.url + "/", hc.timeout)
            futs["ps"] = self._probe("ps", config.ollama.url + "/api/ps", hc.timeout)
        if config.webui.enabled:
            base = config.webui.url
            futs["webui"] = self._probe("webui", base + "/health", hc.timeout)
            if webui_starting:
                futs["ready"] = self._probe("ready", base + "/ready", hc.timeout)
        if tls_on:
            futs["https"] = self._probe("https", config.proxy_probe, hc.timeout,
                                        tls=self.tls.context(config))
        nodes = config.webui.ollama_urls if config.webui.enabled else ()
        self._probe_nodes(futs, nodes, hc.timeout, admin)
        if self.gpu is not None and config.gpu.watch:
            futs["gpu"] = self._submit("gpu", self.gpu.observe, ollama_cgroup)
        wait([f for f in futs.values() if f is not None], timeout=hc.timeout + 0.25)
        self._drop_clients(futs)

        def result(key):
            f = futs.get(key)
            if f is None or not f.done():
                return None, "did not answer in time"
            try:
                return f.result(), None
            except Exception as e:  # adapters should not raise; report if one does
                return None, str(e) or type(e).__name__

        unit_states, unit_err = result("units")
        unit_states = unit_states or {}
        timeout_probe = Probe(False, hc.timeout, None, f"timeout after {hc.timeout:g} s")

        def probe(key):
            if key not in futs:
                return None, None
            r, _ = result(key)
            return r if r is not None else (timeout_probe, None)

        ollama_probe, _ = probe("ollama")
        ps_probe, ps_body = probe("ps")
        wp, _ = probe("webui")
        rp, _ = probe("ready")
        hp = answered(probe("https")[0])
        unit_states = self._refreshed(unit_states, ((OLLAMA, ollama_probe), (WEBUI, wp), (HTTPS, hp)), started)
        services = {}
        if local:
            services[OLLAMA] = self._ollama(config, unit_states.get(UNITS[OLLAMA]), unit_err, ollama_probe,
                                            http.parse_ps(ps_body) if ps_probe and ps_probe.ok else None)
        if config.webui.enabled:
            unit = unit_states.get(UNITS[WEBUI])
            services[WEBUI] = ServiceObs(WEBUI, unit, unit_err, wp, rp, cpu_seconds=_cpu_if_failed(unit, wp))
        if tls_on:
            services[HTTPS] = ServiceObs(HTTPS, unit_states.get(UNITS[HTTPS]), unit_err, hp)
        node_obs, nodes_error, nodes_differ = self._nodes(nodes, probe)
        gpu_obs, gpu_err = result("gpu") if "gpu" in futs else (GpuObs(state="off"), None)
        if gpu_obs is None:
            gpu_obs = GpuObs(state="error", error=f"GPU watch: {gpu_err}")
        return Observation(now=self.clock(), services=MappingProxyType(services), gpu=gpu_obs,
                           jobs=MappingProxyType(_job_obs(jobs, unit_states)), maintenance=maintenance(),
                           generation=generation, in_flight=in_flight, exposed=_exposed(config),
                           nodes=node_obs, nodes_error=nodes_error, nodes_differ=nodes_differ,
                           host=self._host_facts() if config.ollama.picks_model else None,
                           backup=backup_obs() if config.backup.enabled and config.webui.enabled else None,
                           disks=disks_obs(config), canary=canary, tls=self.tls.observe(config) if tls_on else None)

    def _ollama(self, config, unit, unit_err, probe, models) -> ServiceObs:
        """Ollama's unit, probe, models, version and (a model loaded) runners for the watchdog."""
        watch = models and unit is not None and config.health.runner_watchdog
        return ServiceObs(OLLAMA, unit, unit_err, probe, models=models, cpu_seconds=_cpu_if_failed(unit, probe),
                          version=self._ollama_version(unit, probe, config.ollama.url, config.health.timeout),
                          runners=procfs.runners(unit.control_group, unit.main_pid) if watch else None)

    def _refreshed(self, unit_states: dict, probes, started: float) -> dict:
        """A failed probe of a unit not read from systemd this cycle: read it now. A quick restart
        (by the admin, an upgrade) leaves the summary "active running" before and after, and
        the policy needs the new start time to grant the start-up grace."""
        failed = {UNITS[s] for s, p in probes if p is not None and not p.ok}
        stale = frozenset(u for u in failed if u in unit_states and self.units.fetched_at(u) < started)
        if stale:
            f = self._submit("details", self.units.states, sorted(stale), stale)
            if f is not None and not wait([f], timeout=0.25).not_done and f.exception() is None:
                return {**unit_states, **f.result()}
        return unit_states

    def _ollama_version(self, unit, probe, url: str, timeout: float) -> str | None:
        """Ollama's version, asked once per start of its unit (only an upgrade changes it, and an
        upgrade restarts it): one GET /api/version in the first cycle it answers, so that the
        policy knows it before it judges where the models run."""
        key = unit.active_enter_mono if unit is not None else None
        if key is None or probe is None or not probe.ok:
            return self._version[1] if key is not None and self._version[0] == key else None
        if self._version[0] != key:
            fut = self._submit("version", http.request, url + "/api/version", timeout)
            if fut is not None and not wait([fut], timeout=timeout + 0.1).not_done:
                answer, body = fut.result()  # http.request never raises
                version = body.get("version") if answer.ok and isinstance(body, dict) else None
                self._version = (key, str(version)[:40] if version else None)
        return self._version[1]

    def _host_facts(self):
        """RAM and cores, read once: ollama.models: auto sizes a CPU model by them."""
        if self._host is None:
            self._host = procfs.host_facts()
        return self._host


def _job_obs(jobs, unit_states) -> dict[str, JobObs]:
    """Each set-up or recovery job: its unit's state and what it last reported (progress files)."""
    progress_all = progress.read_all()
    out = {}
    for job, unit in jobs:
        p = progress_all.get(job)
        out[job] = JobObs(job, unit_states.get(unit), p.text if p else None, p.fraction if p else None,
                          p.state if p else None)
    return out


class UnitWatch:
    """States of a fixed set of units, read from systemd again only when it said they changed.

    states() first dispatches the signals received since the last call. A signal only marks its
    unit as changed; the values are read with the same calls as always (ListUnitsByNames, and
    for a service its start time, main PID, restarts and result), so they are as fresh as a poll
    at that moment, and a signal that raced a read can never roll a fresher value back. What is
    read: the units marked changed, the ones the caller wants `fresh`, and all of them on the
    first call, after (re)subscribing, after a D-Bus error, on a daemon-reload or a change of
    unit files, and every `resync_every` seconds, so that a missed signal cannot blind the
    daemon for long. Idle, that is no D-Bus call at all between resyncs.

    A unit changed through the adapter (start, kill ...) is read again at the next call. Without
    signals (subscribing failed: said in the journal), every call reads every unit, as a poll,
    and subscribing is retried every `resync_every`.
    """

    RESYNC_EVERY = 30.0
    # A not-loaded unit read by us is loaded by systemd for the answer (UnitNew) and dropped
    # again at once: a UnitNew that soon after our own read is ours, not a new unit file.
    OWN_LOAD = 2.0

    def __init__(self, systemd, names, services=(), clock=time.monotonic, resync_every: float = RESYNC_EVERY):
        self.systemd = systemd
        self.names = tuple(names)
        self.services = frozenset(services)  # units whose details (start time, PID ...) are read
        self.clock = clock
        self.resync_every = resync_every
        self._lock = threading.Lock()  # one reader at a time
        self._dirty_lock = threading.Lock()  # invalidate() must not wait for a stuck reader
        self._sub = None
        self._summary: dict[str, tuple] = {}
        self._detail: dict[str, dict] = {}
        self._fetched: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._resync_at = float("-inf")
        self._subscribe_at = float("-inf")
        self._sub_error: str | None = None
        self.reads = 0  # ListUnitsByNames calls made: for tests and benches
        systemd.on_change(self.invalidate)

    @property
    def events(self) -> bool:
        """True while systemd's signals are followed (False: polling)."""
        return self._sub is not None

    def fetched_at(self, name: str) -> float:
        """When `name` was last read from systemd (-inf: never)."""
        return self._fetched.get(name, float("-inf"))

    def invalidate(self, name: str | None = None) -> None:
        """Read `name` (None: every unit) again at the next call."""
        with self._dirty_lock:
            if name is None:
                self._resync_at = float("-inf")
            else:
                self._dirty.add(name)

    def close(self) -> None:
        if not self._lock.acquire(timeout=0.5):  # a read stuck in D-Bus: the process is ending anyway
            return
        try:
            if self._sub is not None:
                self._sub.close()
                self._sub = None
        finally:
            self._lock.release()

    def states(self, names=None, fresh=frozenset()) -> dict[str, UnitState]:
        """States of `names` (default: all watched units); raises SystemdError."""
        names = self.names if names is None else tuple(names)
        with self._lock:
            now = self.clock()
            self._follow(now)
            with self._dirty_lock:
                if self._sub is None or now >= self._resync_at:
                    need = set(names)
                    self._resync_at = now + self.resync_every
                    full = True
                else:
                    need = {n for n in names if n in self._dirty or n in fresh or n not in self._summary}
                    full = False
                self._dirty -= need  # taken now: a change while we read marks it again
            if need:
                try:
                    self._read(sorted(need), fresh, now, changed_only=self._sub is None)
                except Exception:
                    with self._dirty_lock:
                        self._dirty |= need
                        if full:
                            self._resync_at = float("-inf")
                    raise
            return {n: make_state(n, self._summary[n], self._detail.get(n, {})) for n in names}

    def _read(self, names: list[str], fresh, now: float, changed_only: bool) -> None:
        """One ListUnitsByNames for `names`, and the details of the loaded services among them.
        Polling (changed_only), a service's details are read only when its summary changed, it
        is wanted fresh or they are a resync period old, as before there were signals."""
        self.reads += 1
        summaries = self.systemd.summaries(names)
        for name in names:
            summary = summaries.get(name, NOT_FOUND)
            if name in self.services and summary[0] == "loaded":
                if not changed_only or name in fresh or name not in self._detail \
                        or summary != self._summary.get(name) \
                        or now - self.fetched_at(name) >= self.resync_every:
                    self._detail[name] = self.systemd.details(name)
                    self._fetched[name] = now
            else:
                self._detail.pop(name, None)
                self._fetched[name] = now
            self._summary[name] = summary

    def _follow(self, now: float) -> None:
        """Subscribe when not (yet, or any more) subscribed; dispatch the signals received."""
        if self._sub is not None and not self._sub.alive:
            self._sub.close()
            self._sub = None
            log.warning("systemd connection closed (re-executed?): subscribing again, reading every unit")
        if self._sub is None and now >= self._subscribe_at:
            try:
                self._sub = self.systemd.subscribe(self.names, self._on_event)
            except Exception as e:  # SystemdError, or GLib refusing the subscription
                self._subscribe_at = now + self.resync_every
                text = str(e) or type(e).__name__
                if text != self._sub_error:
                    log.error("cannot follow systemd's unit signals: reading every unit each cycle",
                              error=text, retry=f"{self.resync_every:g}s")
                self._sub_error = text
            else:
                with self._dirty_lock:
                    self._resync_at = float("-inf")  # changes before the subscription went unsignalled
                if self._sub_error is not None:
                    log.notice("following systemd's unit signals again")
                    self._sub_error = None
        if self._sub is not None:
            self._sub.pump()
            if self._sub.errors:
                for err in self._sub.errors:
                    log.error("systemd signal not understood: reading every unit", error=err)
                self._sub.errors.clear()
                self.invalidate()

    def _on_event(self, kind: str, name: str | None) -> None:
        if kind in ("reload", "files"):
            self.invalidate()
        elif kind == "changed":
            self.invalidate(name)
        elif kind == "new":
            # A unit file that appeared: a not-found unit loads now. Any other UnitNew is a unit
            # systemd had dropped (inactive, unreferenced) and loaded again: nothing changed.
            if self._summary.get(name, NOT_FOUND)[0] != "loaded" and \
                    self.clock() - self.fetched_at(name) >= self.OWN_LOAD:
                self.invalidate(name)


def _cpu_if_failed(unit: UnitState | None, probe: Probe | None) -> float | None:
    """The CPU time of a service's cgroup, read only when its probe failed (a start that is
    working, e.g. migrating a database, is told from a hung one by it): nothing when healthy."""
    if unit is None or probe is None or probe.ok or not unit.control_group:
        return None
    return procfs.cgroup_cpu_seconds(unit.control_group)


def _exposed(config) -> bool:
    """ollama.allow_from is set but the set-up job's probe found that systemd cannot enforce it
    here (provision/ollama/firewall.py wrote the verdict for the allow-list it checked)."""
    if not config.ollama.enabled or not config.ollama.allow_from:
        return False
    doc = fsutil.read_json(paths.FIREWALL_FILE)
    return isinstance(doc, dict) and doc.get("enforced") is False and doc.get("allow_from") == list(
        config.ollama.allow_from)


def backup_obs(path: str = paths.BACKUP_STATUS_FILE) -> BackupObs:
    """The last backup's outcome, as `localaid backup` recorded it."""
    doc = fsutil.read_json(path)
    doc = doc if isinstance(doc, dict) else {}
    good = doc.get("last_good") if isinstance(doc.get("last_good"), dict) else {}
    last = doc.get("last") if isinstance(doc.get("last"), dict) else {}

    def num(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return BackupObs(wall=time.time(), good_at=num(good.get("at")), good_size=num(good.get("size")),
                     last_at=num(last.get("at")),
                     last_error=None if last.get("ok", True) else str(last.get("error") or "failed")[:200],
                     since=num(doc.get("since")))


def disks_obs(config) -> tuple[DiskObs, ...]:
    """statvfs of Ollama's models dir and Open WebUI's data dir (a few microseconds each): the
    nearest existing directory above a path that does not exist yet."""
    wanted = ([("models", config.ollama.models_dir or paths.OLLAMA_MODELS_DIR)] if config.ollama.enabled else []) + \
        ([("webui", config.webui.data_dir)] if config.webui.enabled else [])
    out = []
    for what, path in wanted:
        probe, st = path, None
        while st is None:
            try:
                st = os.statvfs(probe)
            except OSError:
                if probe in ("/", ""):
                    break
                probe = os.path.dirname(probe)
        out.append(DiskObs(what, path, st.f_bavail * st.f_frsize if st else None,
                           st.f_blocks * st.f_frsize if st else None, st.f_fsid if st else 0))
    return tuple(out)


def maintenance() -> frozenset[str]:
    """Services an upgrade is working on: /run/localaid/maintenance/<service> naming the job's
    process (PID and start time). A marker whose process is gone, or whose PID now belongs to
    another process, is stale (the job was killed) and is ignored: it never freezes supervision.
    """
    try:
        names = os.listdir(paths.MAINTENANCE_DIR)
    except FileNotFoundError:
        return frozenset()
    return frozenset(n for n in names if not n.startswith(".")
                     and progress.owner_alive(os.path.join(paths.MAINTENANCE_DIR, n)))
