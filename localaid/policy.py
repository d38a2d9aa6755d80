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
    policy_backup, policy_disk, policy_gpu, policy_jobs, policy_models, policy_nodes, policy_runner,
)
from localaid.quantity import fmt_seconds
from localaid.records import (
    OLLAMA, UNITS, WEBUI, Action, Decision, History, Observation,
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


def _grace(config, name: str) -> float:
    return config.health.ollama_start_grace if name == OLLAMA else config.health.webui_start_grace


def _enabled_services(config) -> tuple[str, ...]:
    """ollama.enabled: false is a UI host (its Ollamas are webui.ollama_urls' nodes)."""
    return tuple(name for name, on in ((OLLAMA, config.ollama.enabled), (WEBUI, config.webui.enabled)) if on)


# ------------------------------------------------------------------------------- services
SETUP_JOB = {OLLAMA: "ollama-setup", WEBUI: "webui-setup"}


def _service(config, name: str, so: ServiceObs | None, h: ServiceHistory, now: float, obs: Observation,
             depends_ok: bool, dependency: str | None, setting_up: bool = False, wedged=None):
    """One service: returns (actions, new history, notes)."""
    hc = config.health
    unit_name = UNITS[name]
    notes: list[str] = []
    actions: list[Action] = []
    window_start = now - hc.restart_window
    restarts = tuple(t for t in h.restarts if t > window_start)
    h = replace(h, restarts=restarts, crashes=tuple(t for t in h.crashes if t > window_start))

    def become(state: str, reason: str, **kw):
        nonlocal h
        if state != h.state and h.state != "unknown" and state in ("ok", "degraded", "stopped", "failing",
                                                                   "restarting"):
            notes.append(f"{name}: {h.state} -> {state}" + (f" ({reason})" if reason else ""))
        h = replace(h, state=state, reason=reason, **kw)

    def h_of():
        return h

    if name in obs.maintenance:
        become("maintenance", "set-up or upgrade at work", failures=0, failing_since=None)
        return actions, h, notes
    if so is None or so.unit is None:
        become("unknown", so.unit_error if so and so.unit_error else "systemd not reachable")
        return actions, h, notes
    unit = so.unit
    if unit.n_restarts > h.seen_n_restarts and h.state != "unknown":
        crashes = unit.n_restarts - h.seen_n_restarts
        how = f" ({unit.result})" if unit.result not in ("", "success") else ""
        notes.append(f"{name}: exited and was restarted by systemd{how}, {crashes} time(s)")
        restarts = restarts + (now,) * crashes
        h = replace(h, restarts=restarts, crashes=h.crashes + (now,) * crashes)
    h = replace(h, seen_n_restarts=unit.n_restarts)

    state, sub = unit.active_state, unit.sub_state
    # Only a service never seen answering is "being installed"; one that served before and is
    # now stopped was stopped by someone, whatever set-up job runs meanwhile.
    if setting_up and h.last_ok is None and (not unit.exists or state in ("inactive", "failed")):
        become("installing", "set-up in progress")
        return actions, h, notes
    if not unit.exists:
        become("missing", "not installed yet" if unit.load_state == "not-found" else unit.load_state)
        return actions, h, notes

    if state == "inactive" and not unit.job:
        become("stopped", "stopped by admin; localaid leaves it until it is started again",
               failures=0, failing_since=None)
        return actions, h, notes
    if state == "failed" or (state == "inactive" and unit.job is False and sub == "failed"):
        return _repair(config, name, unit_name, h, now, "start", "failed",
                       f"systemd gave up on it (result {unit.result or 'unknown'})", become), h_of(), notes
    if state in ("activating", "deactivating", "reloading") or sub == "auto-restart":
        if len(restarts) >= hc.restart_limit:
            become("degraded", f"crash loop, {len(restarts)} restarts in {fmt_seconds(hc.restart_window)}")
        else:
            reason = "systemd restarting it after a crash" if sub == "auto-restart" else state
            become("restarting" if sub == "auto-restart" else "starting", reason)
        return actions, h, notes

    # active: judge by the probe
    probe = so.probe
    uptime = now - unit.active_enter_mono
    grace = _grace(config, name)
    if probe is not None and probe.ok:
        return _answering(config, name, so, h, now, restarts, wedged, become, notes), h_of(), notes
    if probe is None:
        become(h.state if h.state != "unknown" else "starting", h.reason)
        return actions, h, notes
    answered_since_start = h.last_ok is not None and h.last_ok >= unit.active_enter_mono
    h = _sample_cpu(h, so, now)
    if uptime < grace and not answered_since_start:
        become("starting", f"started {fmt_seconds(uptime)} ago, grace {fmt_seconds(grace)}", failures=0)
        return actions, h, notes
    if (not answered_since_start and uptime < hc.busy_start_limit and probe.error == "connection refused"
            and h.busy_at is not None and now - h.busy_at <= BUSY_HOLD):
        become("starting", f"working for {fmt_seconds(uptime)}, port not open yet (migrating?)", failures=0)
        return actions, h, notes
    failures = h.failures + 1
    since = h.failing_since if h.failing_since is not None else now
    h = replace(h, failures=failures, failing_since=since)
    if not depends_ok:
        become("waiting", f"{dependency} is down; not {name}'s fault", failures=0)
        return actions, h, notes
    if failures < hc.failures:
        become("failing", f"{probe.error} ({failures}/{hc.failures})")
        return actions, h, notes
    cause = "hung" if probe.error and "timeout" in probe.error else "unhealthy"
    evidence = f"{failures} probes failed in a row, last: {probe.error}"
    return _repair(config, name, unit_name, h, now, "kill-restart", cause, evidence, become), h_of(), notes


def _answering(config, name: str, so: ServiceObs, h: ServiceHistory, now: float, restarts, wedged,
               become, notes: list[str]) -> list[Action]:
    """A service whose liveness probe answered: ok, still starting, degraded by its restarts, or
    (Ollama) wedged behind its answering API (`wedged`: policy_runner's evidence)."""
    hc = config.health
    uptime = now - so.unit.active_enter_mono
    if name == WEBUI and so.ready is not None and not so.ready.ok and uptime < _grace(config, name):
        become("starting", f"migrating/starting for {fmt_seconds(uptime)}", failures=0)
        return []
    if wedged is not None:  # (the runners' last work, evidence)
        h = replace(h, failing_since=min(h.failing_since or now, wedged[0]))
        return _repair(config, name, UNITS[name], h, now, "kill-restart", policy_runner.CAUSE, wedged[1], become)
    if h.failing_since is not None:
        notes.append(f"{name}: healthy again after {fmt_seconds(now - h.failing_since)}")
    if len(restarts) >= hc.restart_limit:
        loop = " (crash loop)" if len(h.crashes) >= 2 else ""
        become("degraded", f"answering, but {len(restarts)} restarts in {fmt_seconds(hc.restart_window)}"
                           f"{loop}", failures=0, last_ok=now, failing_since=None)
        return []
    quiet = not restarts
    become("ok", "", failures=0, failing_since=None, last_ok=now, backoff=0.0 if quiet else h.backoff,
           next_attempt=0.0 if quiet else h.next_attempt)
    return []


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


def _repair(config, name, unit_name, h, now, kind, cause, evidence, become) -> list[Action]:
    """Restart now if backoff and budget allow; otherwise say when. Returns the actions."""
    hc = config.health
    n = len(h.restarts)
    if now < h.next_attempt:
        wait = h.next_attempt - now
        state = "degraded" if n >= hc.restart_limit else "failing"
        become(state, f"{cause}; next restart in {fmt_seconds(wait)}, {n}/{hc.restart_limit} in "
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
    become(state, reason, failures=0, restarts=h.restarts + (now,), backoff=delay, next_attempt=now + delay,
           last_action=f"{kind} ({cause})")
    return [Action(kind, unit_name, cause, evidence, service=name)]


# --------------------------------------------------------------------------------- status
def _service_status(config, name: str, h: ServiceHistory, obs: Observation) -> ServiceStatus:
    detail = ""
    if name == WEBUI:
        detail = f":{config.webui.port}"
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
    actions: list[Action] = []
    notes: list[str] = []
    # Jobs first: a service whose set-up job is (re)starting now is "installing", not stopped.
    job_actions, jobs, job_notes = policy_jobs.decide_jobs(config, obs, hist, now)
    services = dict(hist.services)
    statuses = []
    folded: set[str] = set()  # set-up jobs already told inside their service's fragment
    runner_actions, runner_hist, wedged = policy_runner.watch(config, obs, hist.runner, now)
    hist = replace(hist, runner=runner_hist)
    actions += runner_actions
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
    hist = replace(hist, services=_freeze(services))

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
    actions += model_actions
    actions += job_actions
    notes += job_notes
    hist = replace(hist, jobs=jobs)

    if any(a.service == OLLAMA and a.kind in ("restart", "kill-restart", "start", "start-job") for a in actions):
        # A fresh Ollama has nothing loaded: preload as soon as it answers, not model_load_grace later.
        hist = replace(hist, warm_attempts=_freeze({}))
    warm_actions, attempts, process = policy_gpu.warm(config, obs, hist, services.get(OLLAMA, ServiceHistory()).state, now)
    actions += warm_actions
    hist = replace(hist, warm_attempts=attempts, warm_process=process)

    parts = []
    for st in statuses:
        parts.append(_fragment(config, st))
        if st.name == OLLAMA and obs.exposed:  # never claim a protection the host does not give
            parts.append("ollama API open to the network (allow_from not enforced here, see localaid doctor)")
        if st.name == OLLAMA and gpu_fragment:
            parts.append(gpu_fragment)
        if st.name == OLLAMA and model_fragment:
            parts.append(model_fragment)
        if st.name == WEBUI and node_fragment:
            parts.append(node_fragment)
    parts += policy_jobs.job_fragments(obs, {j: jh for j, jh in jobs.items() if j not in folded}, now)
    parts += [f for f in (policy_disk.disk_fragment(config, obs.disks),
                          policy_backup.backup_fragment(config, obs.backup)) if f]
    healthy = all(st.state == "ok" for st in statuses) and not model_fragment and not _pulling(obs) and \
        (not obs.nodes or any(h.state != "out" for h in node_hist.values()))  # a UI host needs a node
    return Decision(tuple(actions), hist, " · ".join(parts), healthy, tuple(statuses), tuple(notes),
                    recheck=_recheck(config, obs, hist))


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
