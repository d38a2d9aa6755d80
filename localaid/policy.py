"""decide(): the whole supervision policy as a pure function.

    decide(config, observation, history) -> Decision(actions, new history, status line, ...)

No I/O, no clock, no randomness: `observation.now` is the time, jitter is derived from a hash,
so every transition can be unit-tested with a fake clock (tests/unit/test_policy.py).

Repair goes through systemd. A hung service (active, but its probe failed `health.failures`
times in a row after its start grace) gets a "kill-restart": SIGKILL to the whole unit, then
RestartUnit. SIGKILL because a hung process may ignore SIGTERM and keep us waiting for
TimeoutStopSec; RestartUnit (rather than leaving it to the unit's Restart=) because it starts at
once instead of after RestartSec, while systemd still keeps the journal and accounting.
A crash (process gone) is left to the unit's own Restart=: systemd is already doing that.
While a service's probes time out, the next cycle runs at once (Decision.recheck): a hang is acted
on about health.interval + health.failures × health.timeout after it began (≤ 2.5 s by default).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from types import MappingProxyType

from localaid import (
    policy_backup, policy_disk, policy_gpu, policy_jobs, policy_models, policy_nodes, policy_runner, policy_tls,
)
from localaid.quantity import fmt_seconds
from localaid.records import (
    HTTPS, OLLAMA, UNITS, WEBUI, Action, Decision, History, Observation,
    ServiceHistory, ServiceObs, ServiceStatus,
)

def _freeze(d: dict) -> MappingProxyType:
    return MappingProxyType(dict(d))


def jitter(key: str, n: int) -> float:
    """A factor in [0.8, 1.2) that is the same for the same (key, n): pure, yet spread out."""
    digest = hashlib.blake2b(f"{key}:{n}".encode(), digest_size=2).digest()
    return 0.8 + 0.4 * int.from_bytes(digest, "big") / 65536


def backoff_delay(health, key: str, n: int) -> float:
    """Delay before restart number n+1, after n restarts in the window (n >= 1)."""
    base = min(health.backoff_max, health.backoff_initial * (2 ** max(0, n - 1)))
    return min(health.backoff_max, base * jitter(key, n))


HTTPS_START_GRACE = 10.0  # nginx answers within a second of its start


def _grace(config, name: str) -> float:
    if name == HTTPS:
        return HTTPS_START_GRACE
    return config.health.ollama_start_grace if name == OLLAMA else config.health.webui_start_grace


def _enabled_services(config) -> tuple[str, ...]:
    """ollama.enabled: false is a UI host (its Ollamas are webui.ollama_urls' nodes); webui.tls
    adds the HTTPS proxy in front of Open WebUI, ollama.expose in front of a GPU node's Ollama."""
    return tuple(name for name, on in ((OLLAMA, config.ollama.enabled), (WEBUI, config.webui.enabled),
                                       (HTTPS, config.proxy_probe is not None)) if on)


# ------------------------------------------------------------------------------- services
SETUP_JOB = {OLLAMA: "ollama-setup", WEBUI: "webui-setup", HTTPS: "webui-setup"}


class _Track:
    """One service's history as this cycle changes it, and the journal notes that go with it."""

    NOTED = ("ok", "degraded", "stopped", "failing", "restarting")  # states whose arrival is journaled

    def __init__(self, name: str, h: ServiceHistory):
        self.name, self.h, self.notes = name, h, []

    def become(self, state: str, reason: str, **kw) -> None:
        h = self.h
        if state != h.state and h.state != "unknown" and state in self.NOTED:
            self.notes.append(f"{self.name}: {h.state} -> {state}" + (f" ({reason})" if reason else ""))
        self.h = replace(h, state=state, reason=reason, **kw)

    def set(self, **kw) -> None:
        self.h = replace(self.h, **kw)


def _service(config, name: str, so: ServiceObs | None, h: ServiceHistory, now: float, obs: Observation,
             depends_ok: bool, dependency: str | None, setting_up: bool = False, wedged=None):
    """One service: returns (actions, new history, notes)."""
    window_start = now - config.health.restart_window
    t = _Track(name, replace(h, restarts=tuple(x for x in h.restarts if x > window_start),
                             crashes=tuple(x for x in h.crashes if x > window_start)))
    actions = _judge(config, name, so, t, now, obs, setting_up, wedged, depends_ok, dependency)
    return actions, t.h, t.notes


def _judge(config, name, so: ServiceObs | None, t: _Track, now: float, obs: Observation, setting_up: bool,
           wedged, depends_ok: bool, dependency: str | None) -> list[Action]:
    """The service's state from its unit (systemd's view) first, then from its probe."""
    if name in obs.maintenance:
        t.become("maintenance", "set-up or upgrade at work", failures=0, failing_since=None)
        return []
    if so is None or so.unit is None:
        t.become("unknown", so.unit_error if so and so.unit_error else "systemd not reachable")
        return []
    unit = so.unit
    _count_crashes(t, unit, now)
    state, sub = unit.active_state, unit.sub_state
    # Only a service never seen answering is "being installed"; one that served before and is
    # now stopped was stopped by someone, whatever set-up job runs meanwhile.
    if setting_up and t.h.last_ok is None and (not unit.exists or state in ("inactive", "failed")):
        t.become("installing", "set-up in progress")
    elif not unit.exists:
        t.become("missing", "not installed yet" if unit.load_state == "not-found" else unit.load_state)
    elif state == "inactive" and not unit.job:
        t.become("stopped", "stopped by admin; localaid leaves it until it is started again",
                 failures=0, failing_since=None)
    elif state == "failed" or (state == "inactive" and unit.job is False and sub == "failed"):
        return _repair(config, name, t, now, "start", "failed",
                       f"systemd gave up on it (result {unit.result or 'unknown'})")
    elif state in ("activating", "deactivating", "reloading") or sub == "auto-restart":
        _in_transition(config, t, state, sub)
    elif so.probe is not None and so.probe.ok:
        return _answering(config, name, so, t, now, wedged)
    elif so.probe is None:
        t.become(t.h.state if t.h.state != "unknown" else "starting", t.h.reason)
    else:
        return _not_answering(config, name, so, t, now, depends_ok, dependency)
    return []


def _count_crashes(t: _Track, unit, now: float) -> None:
    """Restarts systemd did on its own since the last look (NRestarts grew) count in the budget."""
    h = t.h
    if unit.n_restarts > h.seen_n_restarts and h.state != "unknown":
        crashes = unit.n_restarts - h.seen_n_restarts
        how = f" ({unit.result})" if unit.result not in ("", "success") else ""
        t.notes.append(f"{t.name}: exited and was restarted by systemd{how}, {crashes} time(s)")
        t.set(restarts=h.restarts + (now,) * crashes, crashes=h.crashes + (now,) * crashes)
    t.set(seen_n_restarts=unit.n_restarts)


def _in_transition(config, t: _Track, state: str, sub: str) -> None:
    hc = config.health
    n = len(t.h.restarts)
    if n >= hc.restart_limit:
        t.become("degraded", f"crash loop, {n} restarts in {fmt_seconds(hc.restart_window)}")
    else:
        t.become("restarting" if sub == "auto-restart" else "starting",
                 "systemd restarting it after a crash" if sub == "auto-restart" else state)


def _answering(config, name: str, so: ServiceObs, t: _Track, now: float, wedged) -> list[Action]:
    """A service whose liveness probe answered: ok, still starting, degraded by its restarts, or
    (Ollama) wedged behind its answering API (`wedged`: policy_runner's (last work, evidence))."""
    hc = config.health
    uptime = now - so.unit.active_enter_mono
    if name == WEBUI and so.ready is not None and not so.ready.ok and uptime < _grace(config, name):
        t.become("starting", f"migrating/starting for {fmt_seconds(uptime)}", failures=0)
        return []
    if wedged is not None:
        t.set(failing_since=min(t.h.failing_since or now, wedged[0]))
        return _repair(config, name, t, now, "kill-restart", policy_runner.CAUSE, wedged[1])
    h = t.h
    if h.failing_since is not None:
        t.notes.append(f"{name}: healthy again after {fmt_seconds(now - h.failing_since)}")
    if len(h.restarts) >= hc.restart_limit:
        loop = " (crash loop)" if len(h.crashes) >= 2 else ""
        t.become("degraded", f"answering, but {len(h.restarts)} restarts in {fmt_seconds(hc.restart_window)}"
                             f"{loop}", failures=0, last_ok=now, failing_since=None)
        return []
    quiet = not h.restarts
    t.become("ok", "", failures=0, failing_since=None, last_ok=now, backoff=0.0 if quiet else h.backoff,
             next_attempt=0.0 if quiet else h.next_attempt)
    return []


def _not_answering(config, name: str, so: ServiceObs, t: _Track, now: float, depends_ok: bool,
                   dependency: str | None) -> list[Action]:
    """An active service whose probe failed: still starting (grace, or busy migrating before it
    listens), waiting on the service it depends on, failing, or (enough failures) repaired."""
    hc = config.health
    probe, unit = so.probe, so.unit
    uptime = now - unit.active_enter_mono
    answered_since_start = t.h.last_ok is not None and t.h.last_ok >= unit.active_enter_mono
    t.h = _sample_cpu(t.h, so, now)
    if uptime < _grace(config, name) and not answered_since_start:
        t.become("starting", f"started {fmt_seconds(uptime)} ago, grace {fmt_seconds(_grace(config, name))}",
                 failures=0)
        return []
    if (not answered_since_start and uptime < hc.busy_start_limit and probe.error == "connection refused"
            and t.h.busy_at is not None and now - t.h.busy_at <= BUSY_HOLD):
        t.become("starting", f"working for {fmt_seconds(uptime)}, port not open yet (migrating?)", failures=0)
        return []
    failures = t.h.failures + 1
    t.set(failures=failures, failing_since=t.h.failing_since if t.h.failing_since is not None else now)
    if not depends_ok:
        t.become("waiting", f"{dependency} is down; not {name}'s fault", failures=0)
        return []
    if failures < hc.failures:
        t.become("failing", f"{probe.error} ({failures}/{hc.failures})")
        return []
    cause = "hung" if probe.error and "timeout" in probe.error else "unhealthy"
    return _repair(config, name, t, now, "kill-restart", cause,
                   f"{failures} probes failed in a row, last: {probe.error}")


# A start that has not opened its port is "working" while its cgroup uses at least BUSY_CPU of a
# core; one quiet stretch (an fsync, a lock) does not end that before BUSY_HOLD has passed.
BUSY_CPU = 0.01
BUSY_HOLD = 10.0


def _sample_cpu(h: ServiceHistory, so: ServiceObs, now: float) -> ServiceHistory:
    """Remember the cgroup's CPU time while the service does not answer, and when it last grew
    by BUSY_CPU of a core or more (observe reads it only after a failed probe)."""
    if so.cpu_seconds is None:
        return replace(h, cpu_sample=None) if h.cpu_sample is not None else h
    busy_at = h.busy_at
    if h.cpu_sample is not None:
        then, cpu = h.cpu_sample
        if now > then and (so.cpu_seconds - cpu) / (now - then) >= BUSY_CPU:
            busy_at = now
    return replace(h, cpu_sample=(now, so.cpu_seconds), busy_at=busy_at)


def _repair(config, name: str, t: _Track, now: float, kind: str, cause: str, evidence: str) -> list[Action]:
    """Restart now if backoff and budget allow; otherwise say when. Returns the actions."""
    hc = config.health
    h = t.h
    n = len(h.restarts)
    if now < h.next_attempt:
        wait = h.next_attempt - now
        state = "degraded" if n >= hc.restart_limit else "failing"
        t.become(state, f"{cause}; next restart in {fmt_seconds(wait)}, {n}/{hc.restart_limit} in "
                        f"{fmt_seconds(hc.restart_window)}")
        return []
    if n >= hc.restart_limit:
        # Budget spent: keep trying, but only every backoff_max, and say so.
        delay = hc.backoff_max
        state, reason = "degraded", (f"{cause}, restart budget spent ({n}/{hc.restart_limit} in "
                                     f"{fmt_seconds(hc.restart_window)}); retrying every {fmt_seconds(delay)}")
    else:
        # The restart that spends the budget is followed by the slow retry interval.
        delay = hc.backoff_max if n + 1 >= hc.restart_limit else backoff_delay(hc, name, n + 1)
        state, reason = "restarting", f"{cause} {fmt_seconds(now - (h.failing_since or now))}, " \
                                      f"{n + 1}/{hc.restart_limit} in {fmt_seconds(hc.restart_window)}"
    t.become(state, reason, failures=0, restarts=h.restarts + (now,), backoff=delay, next_attempt=now + delay,
             last_action=f"{kind} ({cause})")
    return [Action(kind, UNITS[name], cause, evidence, service=name)]


# --------------------------------------------------------------------------------- status
def _service_status(config, name: str, h: ServiceHistory, obs: Observation) -> ServiceStatus:
    detail = ""
    if name == WEBUI:
        detail = f":{config.webui.serve[1]}"
    elif name == HTTPS:
        detail = f":{config.webui.port}" if config.webui.enabled and config.webui.tls.enabled else \
            f":{config.ollama.expose_bind[1]}"
    elif name == OLLAMA:
        so = obs.services.get(OLLAMA)
        if so is not None and so.models:
            n = len(so.models)
            detail = f"{n} model{'s' if n != 1 else ''} warm"
    window = [t for t in h.restarts if t > obs.now - config.health.restart_window]
    return ServiceStatus(name, h.state, h.reason, detail, len(window))


STATUS_TEXT_MAX = 72  # characters of a job's own words in STATUS (the rest is in `localaid status`)


def _short(text: str, limit: int = STATUS_TEXT_MAX) -> str:
    """At most `limit` characters, cut in the middle: a job's words end with what happens next
    ("…, retrying in 2 min"), which must survive as much as their beginning."""
    if len(text) <= limit:
        return text
    tail = min(24, limit // 3)
    return text[:limit - tail - 1].rstrip() + "…" + text[-tail:].lstrip()


def _setup_status(st: ServiceStatus, job, jo, running: bool, now: float) -> ServiceStatus:
    """A service never seen answering, with a set-up job: say how its installation goes in its
    own fragment ("ollama installing: downloading install script (40%)", "open-webui not
    installed (setup failed: …; retry in 30 s)"), never "stopped by admin" for a service that
    nobody stopped because it never ran."""
    text = jo.text if jo is not None and jo.text else ""
    if running:
        return replace(st, state="installing", reason=_short(text or "set-up in progress") + policy_jobs.pct(jo))
    if job.state == "blocked":  # "open-webui not installed (needs Python 3.11 or 3.12, see localaid doctor)"
        return replace(st, state="not installed", reason=_short(text or "needs the administrator, see localaid doctor"))
    if job.state == "failed":
        return replace(st, state="not installed",
                       reason=f"setup failed: {_short(text or 'see journalctl')}; "
                              f"retry in {fmt_seconds(job.next_attempt - now)}")
    return st


def _fragment(config, st: ServiceStatus) -> str:
    if st.state == "ok":
        return f"{st.name} ok" + (f" {st.detail}" if st.detail.startswith(":") else
                                  (f", {st.detail}" if st.detail else ""))
    budget = f", {st.restarts_in_window}/{config.health.restart_limit} in " \
             f"{fmt_seconds(config.health.restart_window)}" if st.restarts_in_window and \
        "in " not in st.reason else ""
    return f"{st.name} {st.state}" + (f" ({st.reason})" if st.reason else "") + budget


# ----------------------------------------------------------------------------------- main
def decide(config, obs: Observation, hist: History) -> Decision:
    now = obs.now
    # Jobs first: a service whose set-up job is (re)starting now is "installing", not stopped.
    job_actions, jobs, job_notes = policy_jobs.decide_jobs(config, obs, hist, now)
    actions, runner_hist, wedged = policy_runner.watch(config, obs, hist.runner, now)
    service_actions, services, statuses, folded, notes = _services(config, obs, hist, jobs, wedged, now)
    actions += service_actions
    hist = replace(hist, runner=runner_hist, services=_freeze(services))

    gpu_actions, gpu_hist, gpu_fragment, gpu_notes = policy_gpu.decide_gpu(config, obs, hist.gpu, now)
    # A restart the GPU policy wants and the service policy already ordered is done once.
    planned = {(a.kind, a.target) for a in actions}
    actions += [a for a in gpu_actions if (a.kind, a.target) not in planned and
                not (a.kind == "restart" and ("kill-restart", a.target) in planned)]
    notes += gpu_notes
    hist = replace(hist, gpu=gpu_hist)

    node_actions, node_hist, node_fragment, node_notes = policy_nodes.decide_nodes(
        config, obs, hist.nodes, now, obs.in_flight)
    actions += node_actions
    notes += node_notes
    hist = replace(hist, nodes=node_hist)

    # A pick is recorded before the set-up job starts in the same cycle, which then pulls it.
    model_actions, model_fragment = policy_models.decide_model(config, obs)
    actions += model_actions + job_actions
    notes += job_notes
    hist = replace(hist, jobs=jobs)

    if any(a.service == OLLAMA and a.kind in ("restart", "kill-restart", "start", "start-job") for a in actions):
        # A fresh Ollama has nothing loaded: preload as soon as it answers, not model_load_grace later.
        hist = replace(hist, warm_attempts=_freeze({}))
    warm_actions, attempts, process = policy_gpu.warm(config, obs, hist, services.get(OLLAMA, ServiceHistory()).state, now)
    actions += warm_actions
    hist = replace(hist, warm_attempts=attempts, warm_process=process)

    beside = {OLLAMA: [f for f in (obs.exposed and EXPOSED, gpu_fragment, model_fragment) if f],
              WEBUI: [node_fragment] if node_fragment else [],
              HTTPS: [f for f in (policy_tls.tls_fragment(obs.tls),) if f]}
    line = _status_line(config, obs, statuses, beside, {j: jh for j, jh in jobs.items() if j not in folded})
    healthy = all(st.state == "ok" for st in statuses) and not model_fragment and not _pulling(obs) and \
        (not obs.nodes or any(h.state != "out" for h in node_hist.values()))  # a UI host needs a node
    return Decision(tuple(actions), hist, line, healthy, tuple(statuses), tuple(notes),
                    recheck=_recheck(config, obs, hist))


# Never claim a protection the host does not give.
EXPOSED = "ollama API open to the network (allow_from not enforced here, see localaid doctor)"


def _services(config, obs: Observation, hist: History, jobs, wedged, now: float):
    """Each enabled service judged, with its STATUS fragment; a set-up job at work is told in its
    service's fragment (`folded`). → (actions, histories, statuses, folded, notes)."""
    services = dict(hist.services)
    actions, statuses, notes, folded = [], [], [], set()
    for name in _enabled_services(config):
        dep = OLLAMA if name == WEBUI and config.ollama.enabled else None
        dep_ok = dep is None or services.get(dep, ServiceHistory()).state in ("ok", "starting", "unknown")
        job = jobs.get(SETUP_JOB[name])
        jo = obs.jobs.get(SETUP_JOB[name])
        setting_up = (job is not None and job.state == "started") or (jo is not None and jo.at_work)
        a, h, n = _service(config, name, obs.services.get(name), services.get(name, ServiceHistory()),
                           now, obs, dep_ok, dep, setting_up, wedged if name == OLLAMA else None)
        services[name] = h
        actions += a
        notes += n
        st = _service_status(config, name, h, obs)
        if st.state == "maintenance" and setting_up and jo is not None and jo.text:
            st = replace(st, reason=_short(jo.text))  # "upgrading …: waiting … (migrating?)"
            folded.add(SETUP_JOB[name])
        elif h.last_ok is None and st.state in ("installing", "missing", "stopped") and job is not None:
            st = _setup_status(st, job, jo, setting_up, now)
            if st.state in ("installing", "not installed"):
                folded.add(SETUP_JOB[name])
        statuses.append(st)
    return actions, services, statuses, folded, notes


def _status_line(config, obs: Observation, statuses, beside: dict, jobs) -> str:
    """STATUS: each service's fragment with what belongs beside it, then the jobs, disk, backups."""
    parts = []
    for st in statuses:
        parts += [_fragment(config, st), *beside.get(st.name, ())]
    parts += policy_jobs.job_fragments(obs, jobs, obs.now)
    parts += [f for f in (policy_disk.disk_fragment(config, obs.disks),
                          policy_backup.backup_fragment(config, obs.backup)) if f]
    return " · ".join(parts)


def _pulling(obs: Observation) -> bool:
    """Ollama's set-up job is pulling models: the stack is not ready to chat yet."""
    jo = obs.jobs.get("ollama-setup")
    return jo is not None and jo.at_work and (jo.text or "").startswith("pulling")


def _recheck(config, obs: Observation, hist: History) -> float:
    """A service whose probes time out is re-probed at once, not an interval later: a hang is then
    acted on about interval + failures × timeout after it began (HAProxy's `fastinter` idea).
    Quick failures (refused, HTTP 500) keep the normal pace, so a short blip is not compressed
    into `failures` probes."""
    hc = config.health
    for name, h in hist.services.items():
        so = obs.services.get(name)
        probe = so.probe if so else None
        if (h.state == "failing" and 0 < h.failures < hc.failures and probe is not None and not probe.ok
                and (probe.error or "").startswith("timeout")):
            return 0.0
    for node in obs.nodes:  # the same for a UI host's nodes: a partitioned node is out ~2.5 s later
        h = hist.nodes.get(node.url)
        if h is not None and h.state == "failing" and node.probe is not None and \
                (node.probe.error or "").startswith("timeout"):
            return 0.0
    return hc.interval
