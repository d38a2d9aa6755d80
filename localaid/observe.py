"""Observe: gather one Observation, every source in parallel, bounded by a deadline.

A source that has not answered by the deadline counts as failed for this cycle ("timeout"), and
is not asked again while its earlier call is still stuck, so a hung D-Bus or HTTP peer can never
stall the loop or pile up threads.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import MappingProxyType

from localaid import paths, progress
from localaid.adapters import http
from localaid.adapters.systemd import make_state
from localaid.records import (
    JOB_UNITS, OLLAMA, UNITS, WEBUI, GpuObs, JobObs, Observation, Probe, ServiceObs,
)


class Observer:
    def __init__(self, systemd, gpu=None, workers: int = 6, clock=time.monotonic):
        self.systemd = systemd
        self.gpu = gpu
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="observe")
        self._pending: dict[str, Future] = {}
        self._details: dict[str, tuple] = {}  # unit -> (summary, fetched at, details)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, key: str, fn, *args) -> Future | None:
        old = self._pending.get(key)
        if old is not None and not old.done():
            return None  # still stuck from an earlier cycle
        fut = self.pool.submit(fn, *args)
        self._pending[key] = fut
        return fut

    def observe(self, config, generation: int = 1, in_flight: frozenset[str] = frozenset(),
                ollama_cgroup: str = "", webui_starting: bool = False,
                refresh: frozenset[str] = frozenset()) -> Observation:
        hc = config.health
        started = self.clock()
        units = [UNITS[OLLAMA]] + ([UNITS[WEBUI]] if config.webui.enabled else [])
        jobs = list(JOB_UNITS.items())
        futs: dict[str, Future | None] = {
            "units": self._submit("units", self._units, units + [u for _, u in jobs], refresh),
            "ollama": self._submit("ollama", http.request, config.ollama.url + "/", hc.timeout),
            "ps": self._submit("ps", http.request, config.ollama.url + "/api/ps", hc.timeout),
        }
        if config.webui.enabled:
            base = f"http://{_connect_host(config.webui.host)}:{config.webui.port}"
            futs["webui"] = self._submit("webui", http.request, base + "/health", hc.timeout)
            if webui_starting:
                futs["ready"] = self._submit("ready", http.request, base + "/ready", hc.timeout)
        if self.gpu is not None and config.gpu.watch:
            futs["gpu"] = self._submit("gpu", self.gpu.observe, ollama_cgroup)
        wait([f for f in futs.values() if f is not None], timeout=hc.timeout + 0.25)

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
        # A failed probe of a unit whose details are from an earlier cycle: fetch them now. A quick
        # restart (by the admin, an upgrade) leaves the summary "active running" before and
        # after, and the policy needs the new start time to grant the start-up grace.
        failed = {UNITS[s] for s, p in ((OLLAMA, ollama_probe), (WEBUI, wp)) if p is not None and not p.ok}
        stale = frozenset(u for u in failed if u in unit_states and self._details.get(u, (0, started))[1] < started)
        if stale:
            f = self._submit("details", self._refetch, stale)
            if f is not None and not wait([f], timeout=0.25).not_done and f.exception() is None:
                unit_states = {**unit_states, **f.result()}
        services = {
            OLLAMA: ServiceObs(OLLAMA, unit_states.get(UNITS[OLLAMA]), unit_err, ollama_probe,
                               models=http.parse_ps(ps_body) if ps_probe and ps_probe.ok else None),
        }
        if config.webui.enabled:
            services[WEBUI] = ServiceObs(WEBUI, unit_states.get(UNITS[WEBUI]), unit_err, wp, rp)
        gpu_obs, gpu_err = result("gpu") if "gpu" in futs else (GpuObs(state="off"), None)
        if gpu_obs is None:
            gpu_obs = GpuObs(state="error", error=f"GPU watch: {gpu_err}")
        progress_all = progress.read_all()
        job_obs = {}
        for job, unit in jobs:
            p = progress_all.get(job)
            job_obs[job] = JobObs(job, unit_states.get(unit), p.text if p else None,
                                  p.fraction if p else None, p.state if p else None)
        return Observation(now=self.clock(), services=MappingProxyType(services), gpu=gpu_obs,
                           jobs=MappingProxyType(job_obs), maintenance=maintenance(),
                           generation=generation, in_flight=in_flight)

    DETAIL_MAX_AGE = 10.0

    def _units(self, names, refresh: frozenset[str]):
        """States of all units: one ListUnitsByNames call, plus the per-service details (main PID,
        restarts, start time, result) only when a unit's summary changed, its probe failed, or
        the cached details are older than DETAIL_MAX_AGE. Idle, that is one D-Bus call a cycle."""
        summaries = self.systemd.summaries(names)
        now = self.clock()
        out = {}
        for name in names:
            summary = summaries.get(name, ("not-found", "inactive", "dead", False))
            detail = {}
            if name in UNITS.values() and summary[0] == "loaded":
                cached = self._details.get(name)
                if cached is None or cached[0] != summary or now - cached[1] > self.DETAIL_MAX_AGE \
                        or name in refresh:
                    cached = self._fetch_details(name, summary)
                detail = cached[2]
            out[name] = make_state(name, summary, detail)
        return out

    def _fetch_details(self, name: str, summary: tuple) -> tuple:
        """(summary, fetched at, details) of a service unit, kept for the next cycles."""
        cached = (summary, self.clock(), self.systemd.details(name))
        self._details[name] = cached
        return cached

    def _refetch(self, names: frozenset[str]):
        """Fresh details for units whose summary this cycle already read."""
        out = {}
        for name in names:
            summary, _, detail = self._fetch_details(name, self._details[name][0])
            out[name] = make_state(name, summary, detail)
        return out


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def maintenance() -> frozenset[str]:
    """Services an upgrade is working on: /run/localaid/maintenance/<service> holding its PID.

    A file whose process is gone is stale (the upgrade was killed) and is ignored.
    """
    try:
        names = os.listdir(paths.MAINTENANCE_DIR)
    except FileNotFoundError:
        return frozenset()
    live = set()
    for name in names:
        try:
            with open(os.path.join(paths.MAINTENANCE_DIR, name)) as f:
                pid = int(f.read().split()[0])
            os.kill(pid, 0)
        except PermissionError:
            pass  # alive, just not ours to signal (we hold no CAP_KILL)
        except (OSError, ValueError, IndexError):
            continue
        live.add(name)
    return frozenset(live)
