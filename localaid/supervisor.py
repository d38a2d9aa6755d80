"""The loop: observe → decide → act → report, once per health.interval. The one place that
wires the adapters together.

Signals only set flags (and wake the sleep through a wakeup fd): SIGHUP reloads the
configuration (a bad one is reported and the old one kept), SIGTERM/SIGINT stop the loop
without touching the services it supervises, SIGUSR1 asks for an immediate cycle (the resume
hook uses it). WATCHDOG=1 is sent only here, after a whole cycle completed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import replace
from types import MappingProxyType

from localaid import config as config_mod
from localaid import fsutil, log, modelchoice, paths, policy, report
from localaid.act import Actor
from localaid.adapters.notify import Notifier, watchdog_interval
from localaid.adapters.systemd import Systemd
from localaid.records import OLLAMA, UNITS, WEBUI, History, ServiceHistory
from localaid.observe import Observer

# The state file and metrics are rewritten when something changed, else at most this often.
STATE_EVERY = 5.0
# How often /proc/devices is read for NVIDIA majors that appeared after localaid started.
DRIVER_CHECK_EVERY = 10.0
EX_TEMPFAIL = 75  # exit so that systemd restarts localaid (Restart=on-failure)


def nvidia_majors() -> frozenset[int]:
    """Majors of the NVIDIA character devices the kernel has now (/proc/devices)."""
    from localaid.procfs import char_majors
    return frozenset(m for name, m in char_majors().items() if name.startswith("nvidia"))


class Supervisor:
    def __init__(self, config, config_path: str, conf_d: str | None, systemd=None, gpu=None,
                 notifier: Notifier | None = None, clock=time.monotonic):
        self.config = config
        self.config_path = config_path
        self.conf_d = conf_d
        self.clock = clock
        self.systemd = systemd or Systemd()
        self.notifier = notifier or Notifier()
        self.observer = Observer(self.systemd, gpu, clock=clock)
        self.actor = Actor(self.systemd, clock=clock)
        self.history = restore_history()
        self.generation = 1
        self.cycles = 0
        self._flags: set[str] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._last_status = None
        self._last_write = float("-inf")
        self.metrics_server = None
        # systemd resolves DeviceAllow=char-nvidia* once, when localaid starts: a driver (or a
        # reloaded nvidia_uvm with a new major) that came later is out of reach until a restart.
        self.majors_at_start = nvidia_majors() if config.gpu.watch else frozenset()
        self._driver_checked = clock()
        self._admin_key: tuple | None = None  # what the Open WebUI admin client was made for (_admin)
        self._admin_client = None

    # ---- signals: set a flag, nothing else ----------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self._flags.add({signal.SIGHUP: "reload", signal.SIGUSR1: "now"}.get(signum, "stop"))

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(s, self._on_signal)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not self._flags:
            select.select([self._wake_r], [], [], seconds)
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    # ---- the loop -------------------------------------------------------------------------------
    def reload(self) -> None:
        self.notifier.send(reloading=1, status="reloading configuration",
                           monotonic_usec=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6))
        try:
            new = config_mod.load(self.config_path, self.conf_d)
        except config_mod.ConfigError as e:
            for line in str(e).splitlines():
                log.error("configuration not reloaded, keeping the running one: " + line)
        else:
            self.config = new
            self.generation += 1
            log.notice("configuration reloaded", sources=",".join(new.sources) or "defaults",
                       generation=self.generation)
        self.notifier.send(ready=1)
        self._last_status = None  # STATUS says "reloading configuration": the next cycle's line replaces it

    def _take_pick(self, now: float) -> None:
        """A model pick just recorded (ollama.models: auto) is ollama.models from now on, as
        config.load() gives it to every other reader: a new generation, so that set-up jobs that
        ran without it run again (pulling it, making it Open WebUI's default). Jobs started in
        this very cycle started after the actor wrote it: they run for the new generation
        already. A pick that could not be written is picked again next cycle."""
        pick = modelchoice.read()
        if pick is None or pick == self.config.ollama.chosen:
            return
        self.config = modelchoice.applied(self.config, pick)
        self.generation += 1
        jobs = {name: replace(jh, generation=self.generation) if jh.state == "started" and jh.started_at == now
                else jh for name, jh in self.history.jobs.items()}
        self.history = replace(self.history, jobs=MappingProxyType(jobs))

    def _admin(self):
        """Open WebUI's admin API client of a UI host (webui.ollama_urls), kept while its
        settings stay the same; None elsewhere."""
        w = self.config.webui
        if not (w.enabled and w.ollama_urls):
            return None
        key = (w.url, w.admin.email, w.admin.password_file)
        if self._admin_key != key:
            from localaid.adapters.webui_admin import WebUIAdmin
            self._admin_key, self._admin_client = key, WebUIAdmin(*key, timeout=3.0)
        return self._admin_client

    def cycle(self) -> float:
        start = self.clock()
        ollama_unit = self._last_unit(OLLAMA)
        webui_h = self.history.services.get(WEBUI)
        # Units whose service is not plainly ok get fresh details (start time, restarts) every cycle.
        refresh = frozenset(UNITS[n] for n, h in self.history.services.items() if h.state != "ok")
        self.actor.webui_admin = self._admin()
        obs = self.observer.observe(self.config, self.generation, self.actor.in_flight,
                                    ollama_cgroup=ollama_unit.control_group if ollama_unit else "",
                                    webui_starting=webui_h is None or webui_h.state != "ok", refresh=refresh,
                                    admin=self.actor.webui_admin, canary=self.actor.canary)
        self._last_obs = obs
        decision = policy.decide(self.config, obs, self.history)
        self.history = decision.history
        for note in decision.notes:
            log.notice(note)
        self.actor.run(decision.actions, self.config)
        if any(a.kind == "choose-model" for a in decision.actions):
            self._take_pick(obs.now)
        took = self.clock() - start
        changed = decision.status_line != self._last_status or decision.actions or decision.notes
        if changed or start - self._last_write >= STATE_EVERY:
            doc = report.state_document(self.config, obs, decision, list(self.actor.recent), self.generation,
                                        took)
            try:
                report.write_state(doc)
                text = report.metrics_text(obs, decision, self.actor.counts, took, self.config)
                report.write_metrics(self.config.metrics.textfile, text)
                if self.metrics_server is not None:
                    self.metrics_server.text = text
                self._last_write = start
            except OSError as e:
                log.error("cannot write state", error=e)
        if decision.status_line != self._last_status:
            self.notifier.status(decision.status_line)
            self._last_status = decision.status_line
        self.notifier.watchdog()
        self.cycles += 1
        return self.config.health.interval if decision.recheck is None else decision.recheck

    def driver_came_late(self) -> bool:
        if not self.config.gpu.watch or self.clock() - self._driver_checked < DRIVER_CHECK_EVERY:
            return False
        self._driver_checked = self.clock()
        new = nvidia_majors() - self.majors_at_start
        if new:
            log.notice("NVIDIA driver loaded after localaid started: restarting localaid so that its "
                       "sandbox lets it reach the GPU", majors=",".join(map(str, sorted(new))))
        return bool(new)

    def _last_unit(self, name):
        obs = getattr(self, "_last_obs", None)
        so = obs.services.get(name) if obs else None
        return so.unit if so else None

    def run(self, max_cycles: int | None = None) -> int:
        self.install_signals()
        wd = watchdog_interval()
        if wd is not None and wd < self.config.health.interval:
            log.warning("WatchdogSec= is shorter than two health intervals: cycles will be cut short",
                        watchdog=f"{wd * 2:g}s", interval=f"{self.config.health.interval:g}s")
        if self.config.metrics.listen:
            try:
                self.metrics_server = report.MetricsServer(self.config.metrics.listen)
            except OSError as e:
                log.error("metrics endpoint not started", listen=self.config.metrics.listen, error=e)
        self.notifier.ready("starting: first health check")
        log.info("localaid started", version=_version(), sources=",".join(self.config.sources) or "defaults",
                 interval=f"{self.config.health.interval:g}s", watchdog=f"{wd * 2:g}s" if wd else "off")
        try:
            while "stop" not in self._flags:
                if "reload" in self._flags:
                    self._flags.discard("reload")
                    self.reload()
                self._flags.discard("now")
                start = self.clock()
                recheck = self.cycle()
                if max_cycles is not None and self.cycles >= max_cycles:
                    break
                if self.driver_came_late():
                    return EX_TEMPFAIL
                self._sleep(recheck - (self.clock() - start))
        finally:
            self.notifier.stopping()
            log.info("localaid stopping; supervised services keep running")
            self.observer.close()
            self.actor.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
        return 0


def _version() -> str:
    from localaid import __version__
    return __version__


def restore_history() -> History:
    """After a crash or watchdog restart of localaid (same boot: /run survives, and monotonic
    times stay valid), keep the restart budget it had; everything else is re-observed."""
    doc = fsutil.read_json(paths.STATUS_FILE)
    if not isinstance(doc, dict):
        return History()
    services = {}
    now = time.monotonic()
    for s in doc.get("services") or ():
        try:
            restarts = tuple(float(t) for t in s.get("restarts") or () if float(t) <= now)
            services[s["name"]] = ServiceHistory(restarts=restarts,
                                                 seen_n_restarts=int((s.get("unit") or {}).get("n_restarts", 0)))
        except (KeyError, TypeError, ValueError):
            continue
    return replace(History(), services=MappingProxyType(services))


def main(config_path: str, conf_d: str | None) -> int:
    """`localaid daemon`: refuse to start on a bad configuration, with the reason in the journal."""
    try:
        config = config_mod.load(config_path, conf_d)
    except config_mod.ConfigError as e:
        for line in str(e).splitlines():
            log.error(line)
        log.error("localaid not started: fix the configuration, then: systemctl restart localaid")
        return 78  # EX_CONFIG
    os.makedirs(paths.RUN_DIR, exist_ok=True)
    gpu = None
    if config.gpu.watch:
        from localaid.adapters.gpu import Gpu
        gpu = Gpu(config)
    return Supervisor(config, config_path, conf_d, gpu=gpu).run()
