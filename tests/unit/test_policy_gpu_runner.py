"""decide_gpu() against what NVML shows of Ollama's runner, as the faithful doubles showed it: the
card's memory moving with what Ollama holds, a partial offload of a model that does not fit (never
a fallback), a runner whose CUDA context died while /api/ps still lists its model, a card
without its driver. Helpers from test_policy_gpu."""

from dataclasses import replace

from localaid import policy_gpu
from localaid.records import EMPTY, GpuObs, LoadedModel
from tests.unit.test_policy_gpu import GIB, OK, ON_CPU, ON_GPU, RTX, decide, kinds, obs


def test_runner_not_a_gpu_compute_process_restarts_after_a_while():
    gpu = replace(OK, devices=(replace(RTX, compute_pids=(777,)),))  # someone else's CUDA program
    actions, h, _, _ = decide(obs(1000, gpu, [ON_GPU]))
    assert actions == ()  # a runner may just be creating its context
    actions, h, _, _ = decide(obs(1000 + policy_gpu.PID_MISS_AFTER - 1, gpu, [ON_GPU]), h)
    assert actions == ()
    actions, h, _, _ = decide(obs(1000 + policy_gpu.PID_MISS_AFTER, gpu, [ON_GPU]), h)
    assert kinds(actions) == [("restart", "ollama.service", "cpu-fallback")]
    assert "none of ollama.service's 1 processes is a GPU compute process" in actions[0].evidence


def test_runner_check_needs_evidence():
    unknown = replace(OK, devices=(replace(RTX, compute_pids=None),))  # NVML cannot list processes
    no_cgroup = replace(OK, ollama_pids=(), devices=(replace(RTX, compute_pids=()),))
    for gpu in (unknown, no_cgroup):
        h = EMPTY
        for t in (1000, 1100, 1200):
            actions, h, _, _ = decide(obs(t, gpu, [ON_GPU]), h)
            assert actions == ()


def test_empty_compute_process_list_is_unknown_not_evidence():
    # NVML in a container or without permission lists no process at all, though ollama's runner uses the GPU
    empty = replace(OK, devices=(replace(RTX, compute_pids=()), replace(RTX, index=1, compute_pids=())))
    h = EMPTY
    for t in (1000, 1000 + policy_gpu.PID_MISS_AFTER, 1000 + 10 * policy_gpu.PID_MISS_AFTER):
        actions, h, _, _ = decide(obs(t, empty, [ON_GPU]), h)
        assert actions == ()


def test_an_nvidia_card_without_driver_runs_on_cpu_without_restarts_or_ladder():
    from localaid.records import NO_DRIVER
    gpu = GpuObs(state="no-driver", error=f"{NO_DRIVER} (PCI 0000:01:00.0: no nvidia kernel module loaded)",
                 resumed_at=990.0, nodes_changed_at=995.0)
    h = EMPTY
    for t in (1000, 1001, 1100, 5000):
        actions, h, frag, notes = decide(obs(t, gpu, [ON_CPU], enter=0.0), h)
        assert actions == () and frag == NO_DRIVER
    assert NO_DRIVER == "NVIDIA GPU without driver: install nvidia-driver (non-free) and reboot"


BIG = int(42 * GIB)  # a 70b model on a 12 GB card
RESERVE = policy_gpu.OLLAMA_MIN_FREE


def partial(used_before: int, vram: int, listed=(4242,)):
    """The card as NVML shows it with `vram` of BIG held by Ollama's runner beside `used_before`."""
    dev = replace(RTX, memory_used=used_before + vram, compute_pids=listed)
    return replace(OK, devices=(dev,)), LoadedModel("llama3.1:70b", BIG, vram)


def test_a_partial_offload_of_a_model_that_does_not_fit_is_never_a_fallback():
    # what the fake Ollama does: whole layers, as many as fit in what was free less its reserve
    layer = -(-BIG // 33)
    vram = (12 * GIB - GIB // 2 - RESERVE) // layer * layer
    gpu, model = partial(GIB // 2, vram)
    h = EMPTY
    for t in (1000, 1000 + 300, 1000 + 3600, 1000 + 86400):  # in and long after model_load_grace
        actions, h, frag, notes = decide(obs(t, gpu, [model], enter=900.0), h)
        assert actions == () and frag == "gpu RTX 4070 12 GB" and notes == ()


def test_a_partial_offload_while_the_card_has_room_is_a_fallback():
    """The same model at the same share, but the card's memory says the rest would have fitted (a
    24 GB card): Ollama chose the CPU for no reason of room."""
    gpu, model = partial(GIB // 2, 4 * GIB)
    gpu = replace(gpu, devices=(replace(gpu.devices[0], memory_total=48 * GIB),))
    actions, _, _, _ = decide(obs(2000, gpu, [model], enter=900.0))
    assert [a.cause for a in actions] == ["cpu-fallback"]
    assert "4.0 of 42.0 GiB in VRAM" in actions[0].evidence


def test_a_runner_gone_from_the_gpu_while_ollama_still_lists_its_model_restarts_after_a_while():
    """Its CUDA context died (no request used it yet, so /api/ps still shows the model in VRAM):
    Ollama's PID was a compute process and is no longer, the list now empty."""
    gone = replace(OK, devices=(replace(RTX, compute_pids=()),))
    h = decide(obs(1000, OK, [ON_GPU], enter=900.0))[1]  # seen: listed
    actions, h, _, _ = decide(obs(1001, gone, [ON_GPU], enter=900.0), h)
    assert actions == ()
    actions, h, _, _ = decide(obs(1001 + policy_gpu.PID_MISS_AFTER, gone, [ON_GPU], enter=900.0), h)
    assert kinds(actions) == [("restart", "ollama.service", "cpu-fallback")]
    assert actions[0].evidence == ("deepseek-r1:8b loaded, but ollama.service's runner is no longer a GPU "
                                   "compute process")


def test_a_runner_gone_right_after_resume_runs_the_ladder_at_once():
    gone = replace(OK, devices=(replace(RTX, compute_pids=()),), resumed_at=1000.5)
    h = decide(obs(1000, OK, [ON_GPU], enter=900.0))[1]
    actions, _, frag, _ = decide(obs(1001, gone, [ON_GPU], enter=900.0), h)
    assert kinds(actions) == [("start-job", "gpu-recover", "resume")]
    assert "no longer a GPU compute process" in actions[0].evidence


def test_without_process_lists_a_runner_gone_shows_as_freed_memory():
    """NVML lists no processes here (a container), before or after: the card's memory freed by
    about what Ollama claims tells it."""
    def gpu(used):
        return replace(OK, devices=(replace(RTX, compute_pids=(), memory_used=used),))
    held = GIB + ON_GPU.size_vram
    h = EMPTY
    for t in (1000, 1001):
        actions, h, _, _ = decide(obs(t, gpu(held), [ON_GPU], enter=900.0), h)
        assert actions == ()
    actions, h, _, _ = decide(obs(1002, gpu(GIB + GIB // 4), [ON_GPU], enter=900.0), h)  # the runner's share freed
    assert actions == ()  # for PID_MISS_AFTER
    actions, h, _, _ = decide(obs(1002 + policy_gpu.PID_MISS_AFTER, gpu(GIB + GIB // 4), [ON_GPU], enter=900.0), h)
    assert [a.cause for a in actions] == ["cpu-fallback"]
    assert "the GPU's used memory fell by 4.9 GiB to 1.2 GiB while ollama still lists 5.2 GiB in VRAM" \
        in actions[0].evidence


def test_other_programs_freeing_a_little_memory_is_not_a_runner_gone():
    def gpu(used):
        return replace(OK, devices=(replace(RTX, compute_pids=(), memory_used=used),))
    h = EMPTY
    for t, used in ((1000, 4 * GIB + ON_GPU.size_vram), (1001, 3 * GIB + ON_GPU.size_vram),
                    (1000 + 10 * policy_gpu.PID_MISS_AFTER, 3 * GIB + ON_GPU.size_vram)):
        actions, h, _, _ = decide(obs(t, gpu(used), [ON_GPU], enter=900.0), h)
        assert actions == ()


def test_a_new_process_or_model_is_a_new_baseline():
    """Ollama restarted (a new start time) with the model again: what the old runner was does not count."""
    gone = replace(OK, devices=(replace(RTX, compute_pids=()),))
    h = decide(obs(1000, OK, [ON_GPU], enter=900.0))[1]
    for t in (1100, 1100 + 10 * policy_gpu.PID_MISS_AFTER):
        actions, h, _, _ = decide(obs(t, gone, [ON_GPU], enter=1090.0), h)
        assert actions == ()


def test_fallback_restarts_that_helped_do_not_count_toward_giving_up():
    """Found with the faithful fake Ollama: an admin restart and a crash each came up on the CPU
    (GPU discovery failed at that start) and each was healed by one restart; a third such start
    within the hour was left on the CPU, as if the restarts had not helped."""
    h, causes, notes_seen = EMPTY, [], []
    for t, enter, model in ((1000, 990.0, ON_CPU), (1010, 1008.0, ON_GPU),     # healed
                            (1900, 1890.0, ON_CPU), (1910, 1905.0, ON_GPU),    # healed again
                            (2800, 2790.0, ON_CPU), (2810, 2805.0, ON_GPU)):   # and again
        actions, h, frag, notes = decide(obs(t, OK, [model], enter=enter), h)
        causes.append([a.cause for a in actions])
        notes_seen += notes
        assert "not restarting again" not in frag
    assert causes == [["cpu-fallback"], [], ["cpu-fallback"], [], ["cpu-fallback"], []]
    assert notes_seen.count("GPU: ollama back on the GPU after 1 restart(s) for a CPU fallback") == 3
