"""The wedged-runner watchdog (pure): Ollama's server answers, but a model's runner stopped.

Ollama computes answers in a runner child per loaded model (`llama-server` from 0.30, `ollama
runner` before). A wedged runner leaves every chat waiting forever while `GET /` and
`/api/version` stay green, so the liveness probe cannot see it. Two signals, neither enough
alone, tell it from the two things that look like it:

- **work**: the runners' CPU time (observe reads it every cycle while a model is loaded) grows
  by BUSY_CPU of a core or more, or a GPU that holds one of Ollama's processes is BUSY_GPU % busy. A long
  answer, a queue of requests (OLLAMA_NUM_PARALLEL=1 runs them one by one) or a long prompt
  keep a runner working: it is never called wedged while it works.
- **a canary**: once runners that worked have been quiet for health.runner_watchdog.quiet, a
  one-token request goes to each loaded model in turn (act.py, keep_alive left as it was), one
  at a time so that one model's answer cannot count as work while another's request waits. Idle
  models answer it at once; a wedged runner never does, and the requests queued behind it neither.

Wedged = the canary timed out (health.runner_watchdog.canary_timeout) and the runners did no work
while it was on its way. The repair is policy.py's kill-restart of ollama.service, with its
budget and backoff. A canary goes only after a spell of work, so a box that is not used sends
none, and a canary's own work does not call for another one (a model's load is work: one canary
follows it). A canary that fails otherwise (an
HTTP error, a model that cannot generate) proves nothing and is not acted on.

Bound: a runner wedged at its last work is restarted quiet + canary_timeout + about one cycle
later (46 s with the defaults; plus the other loaded models' answers, asked first), then healthy
when Ollama has restarted and reloaded the model. Not caught: a runner that spins its CPU without
producing anything (it looks busy); a wedge while another model's runner keeps working on chats
(caught once that one rests); and a request that starts within a cycle of a canary's answer and
wedges before the next look, since that cycle's work is taken for the canary's own.
"""

from __future__ import annotations

from dataclasses import replace

from localaid.quantity import fmt_seconds
from localaid.records import OLLAMA, Action, Observation, RunnerHistory

BUSY_CPU = 0.01  # of a core: below this, runners count as quiet
# Percent: NVML's utilisation is the whole card's, and a desktop or another program keeps a few
# percent on it; a model computing keeps it far above.
BUSY_GPU = 10
CANARY_KEY = "canary"  # its key in Observation.in_flight while act.py runs it
CAUSE = "wedged runner"


def watch(config, obs: Observation, rh: RunnerHistory, now: float):
    """One cycle → (actions, new history, None or a wedge: (its runners' last work, evidence))."""
    so = obs.services.get(OLLAMA)
    runners = so.runners if so is not None else None
    if (not config.health.runner_watchdog or so is None or so.probe is None or not so.probe.ok
            or not so.models or runners is None or not runners.pids):
        return [], RunnerHistory(), None  # nothing loaded, or Ollama itself not answering
    if runners.pids != rh.pids:  # a model loaded or unloaded, a new Ollama: start over
        # A new runner has just loaded its model: that was work (its CPU time before this look
        # is not seen), and the answer that follows a load may be the one that wedges.
        new = bool(set(runners.pids) - set(rh.pids))
        return [], RunnerHistory(pids=runners.pids, cpu_sample=(now, runners.cpu_seconds),
                                 worked_at=now if new else None, armed=new), None
    rh = _sample(obs, rh, runners, now)
    if rh.wedged is not None:  # until the restart replaces them (budget and backoff permitting)
        if rh.worked_at == now:
            return [], replace(rh, wedged=None, armed=False), None  # it came back by itself
        return [], rh, (rh.worked_at if rh.worked_at is not None else now, rh.wedged)
    if rh.canary_sent is not None:
        return _judge(config, obs, rh, now)
    if rh.armed and rh.worked_at is not None and now - rh.worked_at >= config.health.runner_quiet \
            and not any(k.startswith("preload:") for k in obs.in_flight):
        actions, rh = _ask(so, rh, now, tuple(m.name for m in so.models),
                           f"runners quiet for {fmt_seconds(now - rh.worked_at)} after working")
        return actions, rh, None
    return [], rh, None


def _ask(so, rh: RunnerHistory, now: float, names: tuple[str, ...], why: str):
    """The canary for the first of `names` still loaded; the others wait their turn. One model at
    a time, so that one model's answer (work) cannot hide another's wedged runner."""
    loaded = {m.name: m for m in so.models}
    todo = [n for n in names if n in loaded]
    if not todo:  # every loaded model answered: nothing owed until the runners work again
        return [], replace(rh, canary_sent=None, pending=(), armed=False, worked_during_canary=False)
    m = loaded[todo[0]]
    action = Action("canary", m.name, "runner-watchdog", why, service=OLLAMA,
                    data={"models": ((m.name, m.expires_at),), "sent": now})
    return [action], replace(rh, canary_sent=now, pending=tuple(todo[1:]), worked_during_canary=False)


def _sample(obs: Observation, rh: RunnerHistory, runners, now: float) -> RunnerHistory:
    """Note whether the runners worked since the last look; work re-arms the watchdog, except
    while a canary is on its way (its own work must not call for the next one). A model's load
    is work too: a chat's first answer follows it at once, and may be the one that wedges."""
    worked = _gpu_busy(obs)
    if rh.cpu_sample is not None:
        then, cpu = rh.cpu_sample
        worked = worked or (now > then and (runners.cpu_seconds - cpu) / (now - then) >= BUSY_CPU)
    rh = replace(rh, cpu_sample=(now, runners.cpu_seconds))
    if not worked:
        return rh
    if rh.canary_sent is not None:
        return replace(rh, worked_at=now, worked_during_canary=True)
    return replace(rh, worked_at=now, armed=True)


def _gpu_busy(obs: Observation) -> bool:
    """A GPU that runs one of Ollama's processes is busy (BUSY_GPU percent or more)."""
    mine = set(obs.gpu.ollama_pids)
    return any((d.utilization or 0) >= BUSY_GPU and d.compute_pids and mine.intersection(d.compute_pids)
               for d in obs.gpu.devices)


def _judge(config, obs: Observation, rh: RunnerHistory, now: float):
    """A canary is on its way: wait for its end, then call the runners idle, busy or wedged."""
    c = obs.canary
    if c is None or c.sent != rh.canary_sent:
        if CANARY_KEY in obs.in_flight or now - rh.canary_sent < config.health.runner_canary_timeout + 5:
            return [], rh, None
        return [], replace(rh, canary_sent=None), None  # lost (localaid restarted its worker): start over
    if c.ok or not c.timed_out:  # idle (an error proves nothing either): the next model, if any
        actions, rh = _ask(obs.services[OLLAMA], rh, now, rh.pending, "the next loaded model")
        return actions, rh, None
    if rh.worked_during_canary:  # busy: ask again after the next quiet spell
        return [], replace(rh, canary_sent=None, pending=(), armed=True, worked_during_canary=False), None
    last = rh.worked_at if rh.worked_at is not None else rh.canary_sent
    evidence = (f"no work by {_names(obs)} for {fmt_seconds(now - last)} (CPU and GPU), and {c.detail}; "
                f"Ollama's API still answers")
    return [], RunnerHistory(pids=rh.pids, cpu_sample=rh.cpu_sample, worked_at=last, wedged=evidence), \
        (last, evidence)


def _names(obs: Observation) -> str:
    runners = obs.services[OLLAMA].runners
    pairs = [f"{n} {p}" for n, p in zip(runners.names, runners.pids)] or [str(p) for p in runners.pids]
    return "runner " + ", ".join(pairs)
