"""Act: carry out the policy's actions through systemd and HTTP, one journal line each.

Quick actions (systemd jobs are queued, not waited for) run inline; a model preload can take
minutes, so it runs in a worker thread and is reported in `in_flight` until it ends.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from localaid import log, modelchoice, nodekeys, paths, policy_runner
from localaid.adapters import http
from localaid.adapters.systemd import SystemdError
from localaid.quantity import fmt_seconds
from localaid.records import JOB_UNITS, Action, CanaryObs

# What localaid does to a supervised service when it is down or hung; the rest (set-up and
# recovery jobs, model preloads) are not restarts and are counted apart.
RESTART_KINDS = frozenset({"restart", "kill-restart", "start"})


class Actor:
    def __init__(self, systemd, clock=time.monotonic):
        self.systemd = systemd
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="act")
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        # (subject, kind, cause) -> n; the subject is the service for a restart, else the target
        # (job, model): report.metrics_text files each kind under its own metric.
        self.counts: dict[tuple[str, str, str], int] = {}
        self.recent: list[dict] = []  # last actions, newest last, for status.json
        self.webui_admin = None  # adapters.webui_admin.WebUIAdmin on a UI host (the supervisor sets it)
        self.canary: CanaryObs | None = None  # how the last runner canary ended (policy_runner)

    @property
    def in_flight(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._in_flight)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def run(self, actions, config) -> None:
        for a in actions:
            if a.kind == "preload":
                self._background(f"preload:{a.target}", self._preload, a, config)
                continue
            if a.kind == "canary":
                self._background(policy_runner.CANARY_KEY, self._canary, a, config)
                continue
            if a.kind in ("node-disable", "node-enable", "nodes-sync"):  # Open WebUI's admin API
                key = "nodes:sync" if a.kind == "nodes-sync" else f"node:{a.target}"
                self._background(key, self._node, a, config)
                continue
            outcome = self._do(a)
            self._record(a, outcome)

    def _do(self, a: Action) -> str:
        try:
            if a.kind == "kill-restart":
                self._kill(a.target)
                self._await_exit(a.target)
                self.systemd.restart(a.target)
            elif a.kind == "restart":
                self.systemd.restart(a.target)
            elif a.kind == "start":
                self._reset_failed(a.target)
                self.systemd.start(a.target)
            elif a.kind == "stop":
                self.systemd.stop(a.target)
            elif a.kind == "start-job":
                unit = JOB_UNITS[a.target]
                self._reset_failed(unit)
                self.systemd.start(unit)
            elif a.kind == "choose-model":
                modelchoice.write(a.data)
                return f"ok, recorded in {paths.MODEL_CHOICE_FILE}"
            else:
                return f"failed: unknown action kind {a.kind!r}"
            return "ok"
        except (SystemdError, KeyError) as e:
            return f"failed: {e}"
        except OSError as e:  # the pick could not be written (a full disk): picked again next cycle
            return f"failed: {e.strerror or e}"

    def _reset_failed(self, unit: str) -> None:
        """Clear a failed state (and the start rate limit) before a start. A unit systemd has not
        loaded yet ("not loaded") has nothing to clear: that is fine."""
        try:
            self.systemd.reset_failed(unit)
        except SystemdError:
            pass

    def _kill(self, unit: str) -> None:
        """SIGKILL the whole unit; if systemd cannot signal every process of the cgroup (seen on
        cgroup v1 hosts: EIO for "auxiliary processes"), at least the main one. The restart that
        follows stops whatever is left."""
        try:
            self.systemd.kill(unit, "all", 9)
            return
        except SystemdError as e:
            first = e
        try:
            self.systemd.kill(unit, "main", 9)
        except SystemdError as e:
            if "No main process" not in str(e):  # else the first call did kill it
                log.warning(f"kill of {unit} failed, restarting anyway", error=first)

    def _await_exit(self, unit: str, limit: float = 1.0) -> None:
        """Wait (at most `limit`) until systemd has seen the killed main process go. A RestartUnit that reaches systemd while it is still taking the unit
        down races with the unit's own Restart=: measured, one hang repair in five then waited
        the full RestartSec= (3 s for ollama.service) on top."""
        deadline = self.clock() + limit
        while True:
            try:
                sub = self.systemd.summaries([unit]).get(unit, ("", "", "", False))[2]
            except SystemdError:
                return
            if sub not in ("running", "stop-sigterm", "final-sigterm", "stop-sigkill", "final-sigkill",
                           "stop-post", "stop") or self.clock() >= deadline:
                return
            time.sleep(0.01)

    def _preload(self, a: Action, config) -> str:
        url = config.ollama.url + "/api/generate"
        probe, body = http.request(url, config.health.model_load_grace, "POST",
                                   {"model": a.target, "keep_alive": -1, "stream": False})
        if probe.ok:
            return f"ok, loaded in {probe.latency:.1f} s"
        detail = body.get("error") if isinstance(body, dict) else None
        return f"failed: {detail or probe.error}"

    def _canary(self, a: Action, config) -> str:
        """One token from the model policy_runner asks (an embedding model: one embedding) within
        health.runner_watchdog.canary_timeout; its unload time stays as it was. The outcome goes
        to self.canary for the next cycle's observation."""
        [(name, expires_at)] = a.data["models"]  # one model per canary: policy_runner asks them in turn
        limit = config.health.runner_canary_timeout
        embedder = config.webui.embedding.model_name if config.embeds_with_ollama else None
        path, body = canary_request(name, embedder, expires_at, time.time())
        probe, answer = http.request(config.ollama.url + path, limit, "POST", body)
        timed_out = not probe.ok and (probe.error or "").startswith("timeout")
        detail = answer.get("error") if isinstance(answer, dict) else None
        failed = "" if probe.ok else f"a one-token request to {name} " + (
            f"did not end within {fmt_seconds(limit)}" if timed_out else f"failed: {detail or probe.error}")
        self.canary = CanaryObs(a.data["sent"], probe.ok, timed_out, failed)
        return f"failed: {failed}" if failed else f"ok, answered in {probe.latency:.1f} s"

    def _node(self, a: Action, config) -> str:
        """Switch a UI host's Ollama node on or off in Open WebUI's connection settings."""
        if self.webui_admin is None:
            return "failed: no Open WebUI admin client"
        if a.kind == "nodes-sync":
            urls = config.webui.ollama_urls
            self.webui_admin.sync(urls, nodekeys.tokens(urls, nodekeys.load()))
            return "ok, Open WebUI's Ollama connections are now webui.ollama_urls, with the nodes' tokens"
        self.webui_admin.set_enabled(a.target, a.kind == "node-enable")
        return "ok, " + ("back in Open WebUI's use" if a.kind == "node-enable" else "out of Open WebUI's use")

    def _background(self, key: str, fn, a: Action, config) -> None:
        with self._lock:
            if key in self._in_flight:
                return
            self._in_flight.add(key)

        def task():
            try:
                outcome = fn(a, config)
            except Exception as e:  # never let a worker die silently
                outcome = f"failed: {e!r}"
            finally:
                with self._lock:
                    self._in_flight.discard(key)
            self._record(a, outcome)

        if a.kind != "canary":  # a canary is told only when it fails
            log.info(f"{a.kind} {a.target}: started", cause=a.cause, evidence=a.evidence)
        self.pool.submit(task)

    def _record(self, a: Action, outcome: str) -> None:
        emit = log.info if outcome.startswith("ok") else log.error
        if a.kind == "canary":  # an idle runner's answer is not news; a failed one may be
            emit = (lambda *_, **__: None) if outcome.startswith("ok") else log.warning
        if a.kind in ("kill-restart", "restart", "start") and outcome.startswith("ok"):
            emit = log.notice
        emit(f"{a.kind} {a.target}: {outcome}", cause=a.cause, evidence=a.evidence)
        with self._lock:
            key = ((a.service or a.target) if a.kind in RESTART_KINDS else a.target, a.kind, a.cause)
            self.counts[key] = self.counts.get(key, 0) + 1
            self.recent.append({"at": time.time(), "kind": a.kind, "target": a.target, "cause": a.cause,
                                "evidence": a.evidence, "outcome": outcome})
            del self.recent[:-20]


def canary_request(model: str, embedder: str | None, expires_at: float | None, wall: float) -> tuple[str, dict]:
    """The runner canary's request for `model`: (path, body). keep_alive is the time the model
    had left (Ollama sets the unload timer again after every request): asking does not keep an
    idle model loaded longer, nor unload one kept forever."""
    body: dict = {"model": model, "stream": False}
    if expires_at is not None:
        left = expires_at - wall
        body["keep_alive"] = -1 if left > 10 * 365 * 86400 else f"{max(1, round(left))}s"
    if model == embedder:
        return "/api/embed", {**body, "input": "ok"}
    return "/api/generate", {**body, "prompt": "Say OK.", "options": {"num_predict": 1}}
