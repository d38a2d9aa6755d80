"""decide_gpu() with a fake clock."""

from types import MappingProxyType

from localaid import policy_gpu
from localaid.config import Config
from localaid.model import EMPTY, GpuDevice, GpuObs, LoadedModel, Observation, Probe, ServiceObs, UnitState

GIB = 2**30
RTX = GpuDevice(0, "NVIDIA GeForce RTX 4070", "GPU-1", 12 * GIB, 1 * GIB)


def obs(now, gpu, models=(), enter=0.0, active="active", sub="running", maintenance=()):
    unit = UnitState("ollama.service", "loaded", active, sub, active_enter_mono=enter)
    so = ServiceObs("ollama", unit, None, Probe(True), models=tuple(models))
    return Observation(now=now, services=MappingProxyType({"ollama": so}), gpu=gpu,
                       maintenance=frozenset(maintenance))


def decide(o, h=EMPTY):
    return policy_gpu.decide_gpu(Config(), o, h, o.now)


def test_status_fragments():
    assert decide(obs(1, GpuObs(state="ok", devices=(RTX,))))[2] == "gpu RTX 4070 12 GB"
    assert decide(obs(1, GpuObs(state="ok", devices=(RTX, RTX))))[2] == "gpu 2× RTX 4070 12 GB"
    assert decide(obs(1, GpuObs(state="none")))[2] == "no NVIDIA GPU found: running on CPU"
    assert decide(obs(1, GpuObs(state="lost")))[2] == "GPU lost: reboot required"
    assert decide(obs(1, GpuObs(state="off")))[2] == ""


def test_boot_race_restarts_ollama_once():
    gpu = GpuObs(state="ok", devices=(RTX,), nodes_changed_at=50.0)
    actions, h, _, _ = decide(obs(100, gpu, enter=10.0))
    assert [(a.kind, a.target, a.cause) for a in actions] == [("restart", "ollama.service", "boot-race")]
    actions, h, _, _ = decide(obs(101, gpu, enter=10.0), h)
    assert actions == ()
    actions, _, _, _ = decide(obs(200, gpu, enter=102.0), h)  # restarted after the fix: fine
    assert actions == ()


def test_no_boot_race_action_without_a_gpu_or_when_stopped():
    assert decide(obs(100, GpuObs(state="none", nodes_changed_at=50.0), enter=10.0))[0] == ()
    gpu = GpuObs(state="ok", devices=(RTX,), nodes_changed_at=50.0)
    assert decide(obs(100, gpu, enter=10.0, active="inactive", sub="dead"))[0] == ()
    assert decide(obs(100, gpu, enter=10.0, maintenance={"ollama"}))[0] == ()


def test_cpu_fallback_restarts_then_gives_up():
    gpu = GpuObs(state="ok", devices=(RTX,))
    cpu_model = LoadedModel("deepseek-r1:8b", int(5.2 * GIB), 0)
    h = EMPTY
    causes = []
    for t in (1000, 1001, 1002, 1003):
        actions, h, frag, _ = decide(obs(t, gpu, [cpu_model], enter=0.0), h)
        causes.append([a.cause for a in actions])
    assert causes == [["cpu-fallback"], ["cpu-fallback"], [], []]
    assert "restarts did not help" in frag
    actions, h, _, _ = decide(obs(1000 + 3601, gpu, [cpu_model]), h)
    assert [a.cause for a in actions] == ["cpu-fallback"]


def test_partial_offload_the_gpu_cannot_avoid_is_left_alone():
    small = GpuDevice(0, "GTX 1650", "GPU-2", 4 * GIB, 1 * GIB)
    big = LoadedModel("llama3:70b", 40 * GIB, 2 * GIB)
    assert decide(obs(1000, GpuObs(state="ok", devices=(small,)), [big]))[0] == ()


def test_model_fully_on_gpu_is_fine_and_loading_has_grace():
    gpu = GpuObs(state="ok", devices=(RTX,))
    assert decide(obs(1000, gpu, [LoadedModel("m", 5 * GIB, 5 * GIB)]))[0] == ()
    loading = LoadedModel("m", 5 * GIB, 2 * GIB)
    assert decide(obs(100, gpu, [loading], enter=90.0))[0] == ()
    assert [a.cause for a in decide(obs(1000, gpu, [loading], enter=90.0))[0]] == ["cpu-fallback"]


def test_state_changes_are_noted():
    _, h, _, _ = decide(obs(1, GpuObs(state="ok", devices=(RTX,))))
    _, _, _, notes = decide(obs(2, GpuObs(state="lost", error="GPU is lost")), h)
    assert notes == ("GPU: ok -> lost (GPU is lost)",)
