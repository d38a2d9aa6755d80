"""The wedged-runner watchdog through policy.decide, with a fake clock: a runner that worked and
went quiet gets one canary; a canary that times out while the runners did nothing restarts
Ollama (budget and backoff as any repair); work, a queue, an idle model or an error never do."""

from dataclasses import replace
from types import MappingProxyType

from localaid import policy, policy_runner
from localaid.records import (
    OLLAMA, WEBUI, CanaryObs, GpuDevice, GpuObs, History, LoadedModel, Observation, RunnerObs, ServiceObs,
)
from tests.unit.test_policy import JOBS_DONE, OK, cfg, jobs_idle, unit

MODEL = LoadedModel("qwen3:8b", 5 * 10**9, 5 * 10**9, expires_at=1.8e9)
PIDS = (4101,)


class Box:
    """Ollama with one loaded model and its runner, cycle after cycle; the runner's CPU time and
    the canary's outcome are what the test makes them."""

    def __init__(self, config=None, pids=PIDS):
        self.config = config or cfg()
        self.hist = replace(JOBS_DONE)
        self.now = 100.0
        self.cpu = 50.0
        self.pids = pids
        self.canary = None
        self.in_flight = frozenset()
        self.gpu = GpuObs(state="none")
        self.models = (MODEL,)
        self.decisions = []
        self.settle()

    def settle(self):
        """The runners loaded a while ago (a load is work: its canary went and was answered);
        what the test does starts from here."""
        for _ in range(16):
            self.cycle()
        while self.hist.runner.canary_sent is not None or self.hist.runner.armed:
            if self.canaries():
                self.answer(ok=True)
            self.cycle()
        self.decisions, self.canary = [], None

    def obs(self) -> Observation:
        runners = RunnerObs(self.pids, self.cpu, ("llama-server",) * len(self.pids))
        services = {OLLAMA: ServiceObs(OLLAMA, unit("ollama.service"), None, OK, models=self.models, runners=runners),
                    WEBUI: ServiceObs(WEBUI, unit("open-webui.service"), None, OK, ready=OK)}
        return Observation(now=self.now, services=MappingProxyType(services), gpu=self.gpu,
                           jobs=MappingProxyType(jobs_idle()), in_flight=self.in_flight, canary=self.canary)

    def cycle(self, cpu_per_s: float = 0.0, seconds: float = 1.0):
        self.now += seconds
        self.cpu += cpu_per_s * seconds
        d = policy.decide(self.config, self.obs(), self.hist)
        self.hist = d.history
        self.decisions.append(d)
        return d

    def canaries(self):
        return [a for d in self.decisions for a in d.actions if a.kind == "canary"]

    def restarts(self):
        return [a for d in self.decisions for a in d.actions if a.kind == "kill-restart"]

    def answer(self, ok: bool, timed_out: bool = False):
        """The canary sent last ends (act.py's outcome, seen by the next cycle)."""
        last = self.canaries()[-1]
        self.canary = CanaryObs(last.data["sent"], ok, timed_out,
                                "" if ok else f"a one-token request to {last.target} did not end within 30 s")


def work_then_quiet(box: Box, work: float = 5, quiet: int = 20):
    for _ in range(int(work)):
        box.cycle(cpu_per_s=0.9)
    for _ in range(quiet):
        box.cycle()


def test_a_runner_that_stops_working_is_asked_once_and_restarted_when_the_canary_times_out():
    box = Box()
    work_then_quiet(box, quiet=14)
    assert box.canaries() == []  # quiet 14 s < 15 s
    box.cycle()
    [canary] = box.canaries()
    assert canary.data["models"] == (("qwen3:8b", 1.8e9),) and canary.target == "qwen3:8b"
    for _ in range(30):  # on its way: no new canary, nothing restarted
        box.in_flight = frozenset({policy_runner.CANARY_KEY})
        box.cycle()
    assert len(box.canaries()) == 1 and box.restarts() == []
    box.in_flight = frozenset()
    box.answer(ok=False, timed_out=True)
    d = box.cycle()
    [restart] = box.restarts()
    assert (restart.target, restart.cause) == ("ollama.service", "wedged runner")
    assert "no work by runner llama-server 4101 for 46 s" in restart.evidence
    assert "did not end within 30 s" in restart.evidence and "Ollama's API still answers" in restart.evidence
    assert "ollama restarting (wedged runner 46 s, 1/5 in 10 min)" in d.status_line


def test_an_idle_model_costs_one_canary_after_work_and_none_while_nobody_uses_it():
    box = Box()
    for _ in range(600):  # loaded, never used: nothing sent
        box.cycle()
    assert box.canaries() == []
    work_then_quiet(box)
    assert len(box.canaries()) == 1
    box.answer(ok=True)
    for _ in range(300):  # the canary's own work (a token) must not call for the next one
        box.cycle(cpu_per_s=0.05 if _ == 0 else 0.0)
    assert len(box.canaries()) == 1 and box.restarts() == []
    work_then_quiet(box)  # used again: one more
    assert len(box.canaries()) == 2


def test_a_long_answer_or_a_queue_is_never_wedged():
    box = Box()
    for _ in range(600):  # ten minutes of a long answer, then a queue: the runner works all along
        box.cycle(cpu_per_s=0.8)
    assert box.canaries() == [] and box.restarts() == []


def test_a_canary_that_times_out_while_the_runner_worked_is_busy_not_wedged():
    box = Box()
    work_then_quiet(box)
    box.in_flight = frozenset({policy_runner.CANARY_KEY})
    for i in range(30):  # a long prompt starts meanwhile: the canary queues behind it
        box.cycle(cpu_per_s=0.9 if i > 10 else 0.0)
    box.in_flight = frozenset()
    box.answer(ok=False, timed_out=True)
    box.cycle(cpu_per_s=0.9)
    assert box.restarts() == []
    work_then_quiet(box, work=0)  # and it is asked again once that work ends
    assert len(box.canaries()) == 2


def test_a_busy_gpu_counts_as_work():
    box = Box()
    box.gpu = GpuObs(state="ok", ollama_pids=PIDS, devices=(
        GpuDevice(0, "RTX", "GPU-1", 12 * 2**30, 6 * 2**30, utilization=97, compute_pids=PIDS),))
    work_then_quiet(box, quiet=40)  # no CPU at all, yet the GPU computes
    assert box.canaries() == []


def test_a_canary_error_is_not_a_wedge():
    box = Box()
    work_then_quiet(box)
    box.answer(ok=False, timed_out=False)
    box.cycle()
    box.cycle()
    assert box.restarts() == []


def test_a_wedge_waits_for_the_backoff_and_is_not_forgotten():
    box = Box()
    allowed = box.now + 120
    box.hist = replace(box.hist, services=MappingProxyType({OLLAMA: replace(
        policy.ServiceHistory(), state="ok", next_attempt=allowed, restarts=(box.now - 5,))}))
    work_then_quiet(box)
    box.answer(ok=False, timed_out=True)
    d = box.cycle()
    assert box.restarts() == [] and "next restart in" in d.status_line
    while not box.restarts():
        box.cycle()
    assert allowed <= box.now < allowed + 1.5
    box.pids = (5150,)  # the restart replaced the runner: a fresh start, nothing owed
    for _ in range(60):
        box.cycle()
    assert len(box.restarts()) == 1


def test_a_runner_that_works_again_by_itself_is_left_alone():
    box = Box()
    work_then_quiet(box)
    box.answer(ok=False, timed_out=True)
    box.hist = replace(box.hist, services=MappingProxyType({OLLAMA: replace(
        policy.ServiceHistory(), state="ok", next_attempt=box.now + 60)}))
    box.cycle()
    box.cycle(cpu_per_s=0.9)
    for _ in range(100):
        box.cycle(cpu_per_s=0.9)
    assert box.restarts() == []


def test_new_runners_start_over_and_nothing_is_watched_without_a_loaded_model():
    box = Box()
    work_then_quiet(box, quiet=10)
    box.pids = (4101, 4202)  # the embedding model loaded: the samples begin again, its load is work
    for _ in range(15):
        box.cycle()
    assert box.canaries() == []
    box.cycle()
    assert len(box.canaries()) == 1
    assert policy_runner.watch(box.config, replace(box.obs(), services=MappingProxyType({})), box.hist.runner,
                               box.now) == ([], policy_runner.RunnerHistory(), None)


def test_switched_off():
    box = Box(config=replace(cfg(), health=replace(cfg().health, runner_watchdog=False)))
    work_then_quiet(box, quiet=60)
    assert box.canaries() == []


def test_no_canary_while_a_model_is_being_preloaded():
    box = Box()
    box.in_flight = frozenset({"preload:qwen3:8b"})
    work_then_quiet(box, quiet=30)
    assert box.canaries() == []
    box.in_flight = frozenset()
    box.cycle()
    assert len(box.canaries()) == 1


def test_the_quiet_and_timeout_keys_set_the_bound():
    c = cfg()
    box = Box(config=replace(c, health=replace(c.health, runner_quiet=5.0, runner_canary_timeout=10.0)))
    work_then_quiet(box, quiet=5)
    assert len(box.canaries()) == 1
    assert History().runner == policy_runner.RunnerHistory()


def test_a_models_load_is_work_the_first_answer_after_it_may_wedge():
    box = Box()
    box.pids = (4101, 4202)  # a second model loads and answers at once (no work seen after the
    for _ in range(16):      # first look at its runner), and that answer wedges
        box.cycle()
    assert len(box.canaries()) == 1
    box.pids = (4101,)  # a model unloaded: nothing new worked
    for _ in range(30):
        box.cycle()
    assert len(box.canaries()) == 1


EMBED = LoadedModel("nomic-embed-text:latest", 3 * 10**8, 3 * 10**8, expires_at=1.7e9)


def two_models_then_quiet() -> Box:
    box = Box(pids=(4101, 4202))
    box.models = (MODEL, EMBED)
    box.settle()
    work_then_quiet(box)
    return box


def test_with_two_models_each_is_asked_in_turn_and_a_wedge_behind_an_answer_is_found():
    box = two_models_then_quiet()
    [first] = box.canaries()
    assert first.target == "qwen3:8b"
    box.answer(ok=True)
    box.cycle(cpu_per_s=0.05)  # its answer was work: it must not hide the second model's wedge
    second = box.canaries()[-1]
    assert second.target == "nomic-embed-text:latest" and len(box.canaries()) == 2
    box.in_flight = frozenset({policy_runner.CANARY_KEY})
    for _ in range(30):
        box.cycle()
    box.in_flight = frozenset()
    box.answer(ok=False, timed_out=True)
    box.cycle()
    [restart] = box.restarts()
    assert "nomic-embed-text:latest did not end within 30 s" in restart.evidence
    assert "runner llama-server 4101, llama-server 4202" in restart.evidence


def test_with_two_models_one_busy_the_other_idle_nothing_is_restarted():
    box = two_models_then_quiet()
    box.answer(ok=True)  # the pick answers
    box.cycle()
    for _ in range(30):  # the embedding model's request waits behind a long batch: its runner works
        box.in_flight = frozenset({policy_runner.CANARY_KEY})
        box.cycle(cpu_per_s=0.9)
    box.in_flight = frozenset()
    box.answer(ok=False, timed_out=True)
    box.cycle(cpu_per_s=0.9)
    assert box.restarts() == [] and len(box.canaries()) == 2


def test_a_few_percent_of_gpu_from_a_desktop_is_not_work():
    box = Box()
    box.gpu = GpuObs(state="ok", ollama_pids=PIDS, devices=(
        GpuDevice(0, "RTX", "GPU-1", 12 * 2**30, 6 * 2**30, utilization=3, compute_pids=PIDS),))
    work_then_quiet(box)
    assert len(box.canaries()) == 1
