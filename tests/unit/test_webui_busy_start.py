"""An upgrade's wait for the new Open WebUI goes on while it migrates (cgroup at work, port not
open yet), up to health.busy_start_limit; a start that is idle and silent fails at the timeout."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from localaid.config import Config
from localaid.provision.webui import service
from localaid.records import UnitState


class Clock:
    def __init__(self):
        self.t = 1000.0


class MigratingHost:
    """open-webui.service, active; no answer for `silent` seconds while using `cpu` of a core,
    then healthy at `version`."""

    def __init__(self, clock, silent: float, cpu: float, version: str = "0.12.5"):
        self.clock, self.silent, self.cpu, self.version = clock, silent, cpu, version
        self.started = clock.t

    def monotonic(self):
        return self.clock.t

    def sleep(self, s):
        self.clock.t += s

    def unit_state(self, unit):
        return UnitState(unit, "loaded", "active", "running", control_group="/system.slice/open-webui.service")

    def cgroup_cpu(self, cg):
        assert cg == "/system.slice/open-webui.service"
        return (self.clock.t - self.started) * self.cpu

    def get(self, url, timeout=2.0):
        if self.clock.t - self.started < self.silent:
            return None, None
        if url.endswith("/api/version"):
            return 200, {"version": self.version}
        return 200, {}


def _ctx(host, limit=1800.0):
    c = Config()
    c = replace(c, health=replace(c.health, busy_start_limit=limit))
    said = []
    return SimpleNamespace(host=host, config=c, timings={},
                           rep=SimpleNamespace(progress=lambda state, text, fraction=None: said.append(text))), said


def test_a_migration_longer_than_the_timeout_is_waited_for():
    clock = Clock()
    ctx, said = _ctx(MigratingHost(clock, silent=400, cpu=0.6))
    assert service.wait_healthy(ctx, "0.12.5", timeout=180) is None
    assert 400 <= clock.t - 1000 < 410
    assert any("port not open yet (migrating?)" in s for s in said)


def test_an_idle_silent_start_fails_at_the_timeout():
    clock = Clock()
    ctx, _ = _ctx(MigratingHost(clock, silent=400, cpu=0.0))
    why = service.wait_healthy(ctx, "0.12.5", timeout=180)
    assert why and "not healthy after 180 s" in why and clock.t - 1000 < 182


def test_work_is_waited_for_up_to_the_limit_only():
    clock = Clock()
    ctx, _ = _ctx(MigratingHost(clock, silent=4000, cpu=0.6), limit=600)
    why = service.wait_healthy(ctx, "0.12.5", timeout=180)
    assert why and "migrating?" in why and 600 <= clock.t - 1000 < 602
