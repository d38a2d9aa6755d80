"""decide()'s keep-warm on the shipped defaults (model_load_grace 5 min): a model that loaded and
then left the same Ollama process is preloaded again at once, not a grace after the first
preload (found by the faithful fake Ollama: a runner that dies on a CUDA error unloads its
model; with the tests' shortened grace the model came back in seconds, with the default in 5 min)."""

from dataclasses import replace
from types import MappingProxyType

from localaid import policy
from localaid.config import Config, ModelSpec
from localaid.records import (
    JOB_UNITS, OLLAMA, GpuObs, History, JobHistory, JobObs, LoadedModel, Observation, Probe, ServiceObs, UnitState,
)

OK = Probe(True, 0.01, 200)
MODEL = LoadedModel("deepseek-r1:8b", 5 * 2**30, 5 * 2**30)


def observe(now, models, pid=7, enter=50.0, in_flight=()):
    unit = UnitState("ollama.service", "loaded", "active", "running", main_pid=pid, active_enter_mono=enter)
    jobs = {j: JobObs(j, UnitState(u, "loaded", "inactive", "dead")) for j, u in JOB_UNITS.items()}
    return Observation(now=now, services=MappingProxyType({OLLAMA: ServiceObs(OLLAMA, unit, None, OK, models=models)}),
                       gpu=GpuObs(state="none"), jobs=MappingProxyType(jobs), in_flight=frozenset(in_flight))


# The set-up jobs have run for this configuration: no preload is sent while they are started,
# queued or at work (the models may not be pulled yet: test_model_pick.py).
SETTLED = History(jobs=MappingProxyType({j: JobHistory(generation=1, state="done") for j in JOB_UNITS}))


def preloads(c, observations):
    hist, out = SETTLED, []
    for o in observations:
        d = policy.decide(c, o, hist)
        hist = d.history
        out.append([a.target for a in d.actions if a.kind == "preload"])
    return out


def config():
    c = Config()  # shipped defaults
    c = replace(c, ollama=replace(c.ollama, models=(ModelSpec("deepseek-r1:8b"),)))
    c = replace(c, webui=replace(c.webui, enabled=False))
    return c


def test_a_model_that_loaded_then_left_is_preloaded_again_at_once():
    c = config()
    assert c.health.model_load_grace == 300.0
    got = preloads(c, [observe(100.0, ()),                                    # preload
                       observe(101.0, (), in_flight={"preload:deepseek-r1:8b"}),
                       observe(105.0, (MODEL,)),                               # loaded: that preload is over
                       observe(160.0, (MODEL,)),
                       observe(161.0, ()),                                     # its runner died: gone
                       observe(162.0, (), in_flight={"preload:deepseek-r1:8b"}),
                       observe(163.0, ())])                                    # that one failed: held now
    assert got == [["deepseek-r1:8b"], [], [], [], ["deepseek-r1:8b"], [], []]


def test_a_preload_that_never_loaded_is_still_held_for_the_grace():
    c = config()
    got = preloads(c, [observe(t, ()) for t in (100.0, 102.0, 399.0, 400.0)])
    assert got == [["deepseek-r1:8b"], [], [], ["deepseek-r1:8b"]]
