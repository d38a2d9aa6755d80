"""The set-up and recovery jobs (pure, for policy.decide): start each once per configuration
generation, retry a failed one with backoff, leave a blocked one to the administrator, and say
in STATUS what each is doing."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from localaid.quantity import fmt_seconds
from localaid.records import Action, History, JobHistory, Observation

JOB_RETRY_INITIAL = 30.0
JOB_RETRY_MAX = 3600.0
JOB_LABELS = {"devices": "GPU devices", "ollama-setup": "ollama setup", "webui-setup": "open-webui setup",
              "gpu-recover": "GPU recovery"}


def wanted_jobs(config) -> tuple[str, ...]:
    jobs = []
    if config.gpu.devices.mode != "off":
        jobs.append("devices")
    if config.ollama.enabled:  # a UI host leaves any local Ollama alone
        jobs.append("ollama-setup")
    jobs.append("webui-setup")  # also when disabled: it then stops and disables open-webui.service
    return tuple(jobs)


def decide_jobs(config, obs: Observation, hist: History, now: float):
    actions, notes = [], []
    jobs = dict(hist.jobs)
    for job in wanted_jobs(config):
        jo = obs.jobs.get(job)
        jh = jobs.get(job, JobHistory())
        unit = jo.unit if jo else None
        if unit is None or not unit.exists:
            continue
        running = unit.job or unit.active_state in ("activating", "deactivating")
        if jh.state == "started" and not running:
            if jo is not None and jo.progress_state == "blocked":  # only the admin can fix it
                notes.append(f"{JOB_LABELS.get(job, job)} needs the administrator: {jo.text}; not retried "
                             f"until the configuration changes")
                jh = replace(jh, state="blocked", failures=jh.failures + 1, next_attempt=float("inf"))
            elif unit.active_state == "failed" or unit.result not in ("", "success"):
                failures = jh.failures + 1
                delay = min(JOB_RETRY_MAX, JOB_RETRY_INITIAL * 2 ** (failures - 1))
                text = (jo.text if jo and jo.text else f"result {unit.result}")
                notes.append(f"{JOB_LABELS.get(job, job)} failed: {text}; retrying in {fmt_seconds(delay)}")
                jh = replace(jh, state="failed", failures=failures, next_attempt=now + delay)
            else:
                jh = replace(jh, state="done", failures=0)
        due = (jh.generation != obs.generation) or (jh.state == "failed" and now >= jh.next_attempt)
        if due and not running:
            actions.append(Action("start-job", job, "provision",
                                  f"configuration generation {obs.generation}" if jh.state != "failed"
                                  else f"retry {jh.failures + 1}"))
            jh = replace(jh, generation=obs.generation, started_at=now, state="started")
        jobs[job] = jh
    return actions, MappingProxyType(dict(jobs)), notes


def pct(jo) -> str:
    """" (40%)" after a job's words, unless they say how far already ("… 42 % of 5.2 GB")."""
    if jo is None or jo.fraction is None or "%" in (jo.text or ""):
        return ""
    return f" ({jo.fraction * 100:.0f}%)"


def job_fragments(obs: Observation, jobs, now: float) -> list[str]:
    out = []
    for job, jh in jobs.items():
        jo = obs.jobs.get(job)
        label = JOB_LABELS.get(job, job)
        running = jo is not None and jo.at_work
        if running:
            text = jo.text or "running"
            out.append(f"{label}: {text}{pct(jo)}")
        elif jh.state == "failed":
            why = (jo.text if jo and jo.text else "failed")
            why = why.removeprefix(f"{label} failed: ")  # the job's own words may say it already
            out.append(f"{label} failed: {why}; retry in {fmt_seconds(jh.next_attempt - now)}")
        elif jh.state == "blocked":
            out.append(f"{label} needs the administrator: {jo.text if jo and jo.text else 'see localaid doctor'}")
    return out
