"""decide_gpu() with a fake clock: status, boot race, CPU fallback, the recovery ladder, resume."""

from dataclasses import replace
from types import MappingProxyType

import pytest

from localaid import policy_gpu
from localaid.config import Config, ModelSpec
from localaid.records import (
    EMPTY, GpuDevice, GpuObs, JobObs, LoadedModel, Observation, Probe, ServiceObs, UnitState, XidEvent,
)

GIB = 2**30
RTX = GpuDevice(0, "NVIDIA GeForce RTX 4070", "GPU-1", 12 * GIB, 1 * GIB, compute_pids=(4242,))
OK = GpuObs(state="ok", devices=(RTX,), ollama_pids=(4242,))
ON_GPU = LoadedModel("deepseek-r1:8b", int(5.2 * GIB), int(5.2 * GIB))
ON_CPU = LoadedModel("deepseek-r1:8b", int(5.2 * GIB), 0)
LOST_REBOOT = "GPU lost (XID 79 or NVML GPU_IS_LOST): reboot required"


def obs(now, gpu=OK, models=(), enter=0.0, active="active", sub="running", maintenance=(), job=None,
        generation=1):
    unit = UnitState("ollama.service", "loaded", active, sub, active_enter_mono=enter)
    so = ServiceObs("ollama", unit, None, Probe(True), models=tuple(models))
    jobs = {"gpu-recover": job} if job is not None else {}
    return Observation(now=now, services=MappingProxyType({"ollama": so}), gpu=gpu,
                       maintenance=frozenset(maintenance), jobs=MappingProxyType(jobs), generation=generation)


def job(state, progress=None, text=None, pending=False):
    """The gpu-recover job as the observer reports it: unit state plus its progress file."""
    unit = UnitState("localaid-gpu-recover.service", "loaded", state,
                     {"activating": "start", "failed": "failed"}.get(state, "dead"), job=pending)
    return JobObs("gpu-recover", unit, text, None, progress)


NO_JOB = job("inactive")


def cfg(**kw):
    c = Config()
    if "ignore" in kw:
        c = replace(c, gpu=replace(c.gpu, ignore_xids=frozenset(kw["ignore"])))
    if "models" in kw:
        c = replace(c, ollama=replace(c.ollama, models=tuple(ModelSpec(m, True) for m in kw["models"])))
    if "overhead" in kw:
        c = replace(c, ollama=replace(c.ollama, gpu_overhead=kw["overhead"]))
    return c


def decide(o, h=EMPTY, config=None):
    return policy_gpu.decide_gpu(config or Config(), o, h, o.now)


def kinds(actions):
    return [(a.kind, a.target, a.cause) for a in actions]


# ------------------------------------------------------------------------------ status
def test_status_fragments():
    assert decide(obs(1, OK))[2] == "gpu RTX 4070 12 GB"
    assert decide(obs(1, GpuObs(state="no-driver")))[2] == \
        "NVIDIA GPU without driver: install nvidia-driver (non-free) and reboot"
    assert decide(obs(1, replace(OK, devices=(RTX, RTX))))[2] == "gpu 2× RTX 4070 12 GB"
    assert decide(obs(1, GpuObs(state="none")))[2] == "no NVIDIA GPU found: running on CPU"
    assert decide(obs(1, GpuObs(state="off")))[2] == ""
    assert decide(obs(1, GpuObs(state="error", error="NVMLError_Unknown")))[2] == "GPU error (NVMLError_Unknown)"


def test_no_gpu_does_nothing():
    _, h, frag, _ = decide(obs(1, GpuObs(state="none"), [ON_CPU], enter=0.0))
    actions, _, frag, _ = decide(obs(1000, GpuObs(state="none"), [ON_CPU], enter=0.0), h)
    assert actions == () and frag == "no NVIDIA GPU found: running on CPU"


# ------------------------------------------------------------------------------ boot race
def test_boot_race_restarts_ollama_once():
    gpu = replace(OK, nodes_changed_at=50.0)
    actions, h, _, _ = decide(obs(100, gpu, enter=10.0))
    assert kinds(actions) == [("restart", "ollama.service", "boot-race")]
    actions, h, _, _ = decide(obs(101, gpu, enter=10.0), h)
    assert actions == ()
    actions, _, _, _ = decide(obs(200, gpu, enter=102.0), h)  # restarted after the fix: fine
    assert actions == ()


def test_a_later_fix_is_a_new_boot_race():
    actions, h, _, _ = decide(obs(100, replace(OK, nodes_changed_at=50.0), enter=10.0))
    actions, h, _, _ = decide(obs(300, replace(OK, nodes_changed_at=250.0), enter=110.0), h)
    assert kinds(actions) == [("restart", "ollama.service", "boot-race")]


def test_no_boot_race_action_without_a_gpu_or_when_stopped_or_in_maintenance():
    assert decide(obs(100, GpuObs(state="none", nodes_changed_at=50.0), enter=10.0))[0] == ()
    gpu = replace(OK, nodes_changed_at=50.0)
    assert decide(obs(100, gpu, enter=10.0, active="inactive", sub="dead"))[0] == ()
    assert decide(obs(100, gpu, enter=10.0, active="failed", sub="failed"))[0] == ()
    assert decide(obs(100, gpu, enter=10.0, maintenance={"ollama"}))[0] == ()


# ------------------------------------------------------------------------------ CPU fallback
def give_up_on_cpu_fallback():
    """Two fallback restarts (each seen to happen: ollama's start time moves) that do not help."""
    h, causes, all_notes = EMPTY, [], []
    # 1005: our restart not seen yet (ollama still has its old start time): not a second try
    for t, enter in ((1000, 0.0), (1005, 0.0), (1010, 1008.0), (1020, 1018.0), (1030, 1018.0)):
        actions, h, frag, notes = decide(obs(t, OK, [ON_CPU], enter=enter), h)
        causes.append([a.cause for a in actions])
        all_notes += notes
    assert causes == [["cpu-fallback"], [], ["cpu-fallback"], [], []]
    assert frag == "gpu RTX 4070 12 GB, model on CPU; not restarting again (2 tries): check `localaid doctor`"
    assert len([n for n in all_notes if "not restarting it again" in n]) == 1  # said once
    return h


def test_cpu_fallback_restarts_stop_for_good():
    h = give_up_on_cpu_fallback()
    for t in (1000 + 3601, 1000 + 7300, 1000 + 86400):  # the window has slid: still nothing
        actions, h, frag, notes = decide(obs(t, OK, [ON_CPU], enter=1018.0), h)
        assert actions == () and notes == ()
        assert "not restarting again (2 tries)" in frag


@pytest.mark.parametrize("change", ["ollama started by someone else", "GPU state changed", "config reloaded"])
def test_cpu_fallback_restarts_again_after_a_change(change):
    h, notes = give_up_on_cpu_fallback(), ()
    if change == "ollama started by someone else":
        o = obs(5000, OK, [ON_CPU], enter=4990.0)
    elif change == "GPU state changed":
        _, h, _, notes = decide(obs(4999, GpuObs(state="error", error="did not answer in time"), [ON_CPU],
                                    enter=1018.0), h)
        o = obs(5000, OK, [ON_CPU], enter=1018.0)
    else:
        o = obs(5000, OK, [ON_CPU], enter=1018.0, generation=2)
    actions, h, _, more = decide(o, h)
    assert [a.cause for a in actions] == ["cpu-fallback"]
    assert any("allowed again" in n for n in notes + more)


def test_cpu_fallback_evidence_names_the_model_and_the_room():
    a = decide(obs(1000, OK, [ON_CPU]))[0][0]
    assert a.evidence == "deepseek-r1:8b: 0.0 of 5.2 GiB in VRAM, 11.0 GiB free on the GPU"
    assert a.service == "ollama"


def test_cpu_fallback_not_when_stopped_or_in_maintenance():
    assert decide(obs(1000, OK, [ON_CPU], active="inactive", sub="dead"))[0] == ()
    assert decide(obs(1000, OK, [ON_CPU], maintenance={"ollama"}))[0] == ()


def test_cpu_fallback_needs_room_beyond_ollamas_reserve():
    # 5.8 GiB free for a 5.2 GiB model: Ollama keeps 457 MiB per GPU free, so it really has 5.35 GiB,
    # less than the model plus the margin
    tight = replace(OK, devices=(replace(RTX, memory_used=int(6.2 * GIB)),))
    assert decide(obs(1000, tight, [ON_CPU]))[0] == ()
    # 10 GiB free is room, unless ollama.gpu_overhead (OLLAMA_GPU_OVERHEAD) reserves 4 GiB of it
    roomy = replace(OK, devices=(replace(RTX, memory_used=2 * GIB),))
    assert [a.cause for a in decide(obs(1000, roomy, [ON_CPU]))[0]] == ["cpu-fallback"]
    assert decide(obs(1000, roomy, [ON_CPU]), config=cfg(overhead=4 * GIB))[0] == ()


def test_partial_offload_the_gpu_cannot_avoid_is_left_alone():
    small = GpuDevice(0, "GTX 1650", "GPU-2", 4 * GIB, 1 * GIB, compute_pids=(4242,))
    big = LoadedModel("llama3:70b", 40 * GIB, 2 * GIB)
    assert decide(obs(1000, replace(OK, devices=(small,)), [big]))[0] == ()


def test_model_fully_on_gpu_is_fine_and_loading_has_grace():
    assert decide(obs(1000, OK, [ON_GPU]))[0] == ()
    loading = LoadedModel("m", 5 * GIB, 2 * GIB)
    assert decide(obs(100, OK, [loading], enter=90.0))[0] == ()
    assert [a.cause for a in decide(obs(1000, OK, [loading], enter=90.0))[0]] == ["cpu-fallback"]


# ------------------------------------------------------------------------------ Xid and the ladder
def test_application_xid_does_nothing_but_a_note():
    gpu = replace(OK, xids=(XidEvent(13, "GPU-1", 99.0),))
    actions, h, frag, notes = decide(obs(100, gpu, [ON_GPU]))
    assert actions == () and frag == "gpu RTX 4070 12 GB"
    assert notes == ("GPU: application Xid 13 on GPU-1 ignored (gpu.ignore_xids)",)


def test_unknown_xid_is_reported_not_acted_on():
    actions, _, _, notes = decide(obs(100, replace(OK, xids=(XidEvent(62, "", 99.0),)), [ON_GPU]))
    assert actions == () and notes == ("GPU: Xid 62 reported; not one that needs a reset",)


@pytest.mark.parametrize("xid", sorted(policy_gpu.CRITICAL_XIDS))
def test_critical_xid_starts_the_ladder(xid):
    actions, h, frag, notes = decide(obs(100, replace(OK, xids=(XidEvent(xid, "GPU-1", 99.0),)), [ON_GPU]))
    assert kinds(actions) == [("start-job", "gpu-recover", "xid")]
    assert actions[0].evidence == f"XID {xid} on GPU-1"
    assert frag == f"GPU recovery (XID {xid}): starting"


def test_ignored_critical_xid_does_nothing():
    gpu = replace(OK, xids=(XidEvent(48, "GPU-1", 99.0),))
    assert decide(obs(100, gpu, [ON_GPU]), config=cfg(ignore={48}))[0] == ()


def run_ladder(h, t, gpu_during, outcome, progress, text, gpu_after, models_after):
    """Ladder job seen running, then finished with `outcome`; returns (h, t, last decision)."""
    d = decide(obs(t, gpu_during, job=job("activating", "running", "reloading nvidia_uvm", True),
                   maintenance={"ollama"}), h)
    assert d[0] == () and d[2].endswith("reloading nvidia_uvm")
    h = d[1]
    d = decide(obs(t + 5, gpu_after, models_after, enter=t + 4, job=job(outcome, progress, text)), h)
    return d[1], t + 5, d


def test_gpu_lost_ladder_fails_then_reboot_required_and_never_loops():
    lost = GpuObs(state="lost", error="GPU is lost (fell off the bus)", xids=(XidEvent(79, "GPU-1", 99.0),))
    actions, h, frag, _ = decide(obs(100, lost, [ON_GPU], job=NO_JOB))
    assert kinds(actions) == [("start-job", "gpu-recover", "xid")]
    assert frag == "GPU recovery (XID 79): starting"
    h, t, (actions, h2, frag, notes) = run_ladder(
        h, 101, replace(lost, xids=()), "failed", "failed",
        "GPU still lost after reloading nvidia_uvm: reboot required", replace(lost, xids=()), [])
    assert actions == ()
    assert frag == "GPU lost (XID 79): reboot required"
    assert any("failed: GPU still lost" in n for n in notes)
    h = h2
    for t in range(110, 400, 7):  # the GPU stays lost: no more actions, the same status
        actions, h, frag, _ = decide(obs(t, replace(lost, xids=()), job=job("failed", "failed", "x")), h)
        assert actions == () and frag == "GPU lost (XID 79): reboot required"


def test_ladder_done_but_gpu_still_lost_is_reboot_required():
    lost = GpuObs(state="lost", error="GPU is lost")
    actions, h, _, _ = decide(obs(100, lost, job=NO_JOB))
    assert kinds(actions) == [("start-job", "gpu-recover", "gpu-lost")]
    h, t, (actions, h, frag, _) = run_ladder(h, 101, lost, "inactive", "done", "GPU recovered", lost, [])
    assert actions == () and frag == LOST_REBOOT


def test_xid_ladder_succeeds_and_is_verified_when_models_are_back_on_the_gpu():
    c = cfg(models=["deepseek-r1:8b"])
    actions, h, _, _ = decide(obs(100, replace(OK, xids=(XidEvent(48, "GPU-1", 99.0),)), [ON_GPU], job=NO_JOB),
                              config=c)
    assert kinds(actions) == [("start-job", "gpu-recover", "xid")]
    d = decide(obs(101, OK, job=job("activating", "running", "stopping ollama", True), maintenance={"ollama"}),
               h, config=c)
    h = d[1]
    # finished; ollama restarted, its model not yet preloaded: verifying
    actions, h, frag, notes = decide(obs(106, OK, [], enter=105.0, job=job("inactive", "done", "ok")), h, config=c)
    assert actions == () and frag == "GPU recovery (XID 48): waiting for the models to load on the GPU"
    # while the model loads on the CPU first, no cpu-fallback restart interferes
    actions, h, frag, _ = decide(obs(110, OK, [ON_CPU], enter=105.0, job=job("inactive", "done", "ok")), h,
                                 config=c)
    assert actions == ()
    actions, h, frag, notes = decide(obs(120, OK, [ON_GPU], enter=105.0, job=job("inactive", "done", "ok")), h,
                                     config=c)
    assert actions == () and frag == "gpu RTX 4070 12 GB"
    assert notes == ("GPU recovered (XID 48) in 20 s: models back on the GPU",)


def test_verify_timeout_is_reboot_required():
    c = cfg(models=["deepseek-r1:8b"])
    _, h, _, _ = decide(obs(100, replace(OK, xids=(XidEvent(48, "", 99.0),)), job=NO_JOB), config=c)
    _, h, _, _ = decide(obs(106, OK, [], enter=105.0, job=job("inactive", "done", "ok")), h, config=c)
    t = 106 + c.health.model_load_grace + 1
    actions, h, frag, notes = decide(obs(t, OK, [ON_CPU], enter=105.0, job=job("inactive", "done", "ok")), h,
                                     config=c)
    assert actions == () and frag == "GPU failed (XID 48): reboot required"
    assert any("still not on the GPU" in n for n in notes)


def test_at_most_ladder_limit_ladders_per_boot():
    h, t, starts = EMPTY, 100, 0
    for i in range(5):
        actions, h, frag, _ = decide(obs(t, replace(OK, xids=(XidEvent(94, "", t),)), [ON_GPU], job=NO_JOB), h)
        starts += len(actions)
        if actions:
            _, h, _, _ = decide(obs(t + 2, OK, [ON_GPU], enter=t + 1, job=job("inactive", "done", "ok")), h)
            _, h, _, _ = decide(obs(t + 3, OK, [ON_GPU], enter=t + 1, job=NO_JOB), h)
        t += 100
    assert starts == policy_gpu.LADDER_LIMIT
    assert frag == "GPU failed (XID 94): reboot required"


def test_reboot_required_names_the_failed_run_not_an_older_xid():
    # Xid 48 at 100: a ladder that works
    _, h, _, _ = decide(obs(100, replace(OK, xids=(XidEvent(48, "GPU-1", 99.0),)), [ON_GPU], job=NO_JOB))
    h, t, (_, h, _, notes) = run_ladder(h, 101, OK, "inactive", "done", "ok", OK, [ON_GPU])
    assert any("GPU recovered (XID 48)" in n for n in notes)
    # later the GPU falls off the bus (NVML only, no Xid event) and the second ladder fails
    lost = GpuObs(state="lost", error="GPU is lost")
    actions, h, _, _ = decide(obs(500, lost, job=NO_JOB), h)
    assert kinds(actions) == [("start-job", "gpu-recover", "gpu-lost")]
    h, t, (actions, h, frag, _) = run_ladder(h, 501, lost, "failed", "failed", "still lost", lost, [])
    assert frag == LOST_REBOOT  # not "GPU lost (XID 48)"


def test_ladder_job_that_never_ran_is_a_failure():
    _, h, _, _ = decide(obs(100, GpuObs(state="lost"), job=NO_JOB))
    actions, h, frag, _ = decide(obs(101, GpuObs(state="lost"), job=NO_JOB), h)
    assert actions == () and frag == "GPU recovery (GPU lost): starting"  # within the slack
    actions, h, frag, _ = decide(obs(100 + policy_gpu.LADDER_START_SLACK + 1, GpuObs(state="lost"), job=NO_JOB), h)
    assert actions == () and frag == LOST_REBOOT


def test_ladder_unit_missing_is_reported():
    missing = JobObs("gpu-recover", UnitState("localaid-gpu-recover.service", "not-found", "inactive", "dead"))
    _, h, _, _ = decide(obs(100, GpuObs(state="lost"), job=missing))
    actions, h, frag, notes = decide(obs(101, GpuObs(state="lost"), job=missing), h)
    assert frag == LOST_REBOOT
    assert notes == ("GPU recovery unavailable: localaid-gpu-recover.service is not installed",)


def test_ladder_waits_for_maintenance_and_remembers_the_xid():
    gpu = replace(OK, xids=(XidEvent(79, "", 99.0),))
    actions, h, frag, _ = decide(obs(100, gpu, maintenance={"ollama"}, job=NO_JOB))
    assert actions == () and frag == "GPU recovery (XID 79) waits: ollama under maintenance"
    actions, h, frag, _ = decide(obs(101, OK, [ON_GPU], job=NO_JOB), h)  # the event is not repeated
    assert kinds(actions) == [("start-job", "gpu-recover", "xid")]


def test_a_ladder_already_running_is_adopted_not_restarted():
    running = job("activating", "running", "reloading nvidia_uvm", True)
    actions, h, frag, _ = decide(obs(100, GpuObs(state="lost"), job=running, maintenance={"ollama"}))
    assert actions == () and frag == "GPU recovery (GPU lost): reloading nvidia_uvm"


def test_gpu_usable_again_after_reboot_required_clears_it():
    _, h, _, _ = decide(obs(100, GpuObs(state="lost"), job=NO_JOB))
    _, h, frag, _ = decide(obs(101, GpuObs(state="lost"), job=job("failed", "failed", "still lost")), h)
    assert frag == LOST_REBOOT
    actions, h, frag, notes = decide(obs(200, OK, [ON_GPU], job=NO_JOB), h)
    assert frag == "gpu RTX 4070 12 GB" and actions == ()
    assert any("usable again" in n for n in notes)


def test_state_changes_are_noted():
    _, h, _, _ = decide(obs(1, OK))
    _, _, _, notes = decide(obs(2, GpuObs(state="none", error="NVIDIA driver not loaded")), h)
    assert notes == ("GPU: ok -> none (NVIDIA driver not loaded)",)


# ------------------------------------------------------------------------------ resume
def test_after_resume_a_cpu_fallback_goes_straight_to_the_ladder():
    gpu = replace(OK, resumed_at=500.0)
    actions, h, _, notes = decide(obs(501, gpu, [ON_CPU], enter=0.0, job=NO_JOB))
    assert kinds(actions) == [("start-job", "gpu-recover", "resume")]
    assert "resumed from sleep" in notes[0]
    assert actions[0].evidence.startswith("after resume: deepseek-r1:8b: 0.0 of 5.2 GiB in VRAM")


def test_resume_with_the_gpu_fine_does_nothing_and_the_window_closes():
    actions, h, _, _ = decide(obs(501, replace(OK, resumed_at=500.0), [ON_GPU], job=NO_JOB))
    assert actions == ()
    # long after the resume, a CPU fallback is a plain restart again
    actions, h, _, _ = decide(obs(501 + policy_gpu.RESUME_WINDOW, replace(OK, resumed_at=500.0), [ON_CPU],
                                  job=NO_JOB), h)
    assert kinds(actions) == [("restart", "ollama.service", "cpu-fallback")]


def test_resume_with_nvml_errors_runs_the_ladder_when_they_persist():
    gpu = GpuObs(state="error", error="did not answer in time", resumed_at=500.0)
    h = EMPTY
    for t in range(501, 501 + policy_gpu.ERROR_CYCLES - 1):
        actions, h, _, _ = decide(obs(t, gpu, job=NO_JOB), h)
        assert actions == ()  # a timeout alone is not a lost GPU
    actions, _, _, _ = decide(obs(501 + policy_gpu.ERROR_CYCLES - 1, gpu, job=NO_JOB), h)
    assert kinds(actions) == [("start-job", "gpu-recover", "resume")]
    assert "did not answer in time (3 checks in a row)" in actions[0].evidence


def test_a_passing_gpu_timeout_after_resume_is_no_ladder():
    timeout = GpuObs(state="error", error="did not answer in time", resumed_at=500.0)
    h = EMPTY
    for t, gpu in ((501, timeout), (502, timeout), (503, replace(OK, resumed_at=500.0)), (504, timeout),
                   (505, replace(OK, resumed_at=500.0))):
        actions, h, _, _ = decide(obs(t, gpu, [ON_GPU], job=NO_JOB), h)
        assert actions == ()


def test_an_old_resume_marker_opens_no_window_after_a_restart_of_localaid():
    # localaid restarted (empty history) long after the resume: resume.json is still in /run/localaid
    gpu = replace(OK, resumed_at=500.0)
    actions, h, _, notes = decide(obs(500 + policy_gpu.RESUME_WINDOW + 30, gpu, [ON_CPU], job=NO_JOB))
    assert kinds(actions) == [("restart", "ollama.service", "cpu-fallback")]  # not the ladder
    assert not any("resumed from sleep" in n for n in notes)
    err = GpuObs(state="error", error="did not answer in time", resumed_at=500.0)
    for t in range(700, 700 + 2 * policy_gpu.ERROR_CYCLES):
        assert decide(obs(t, err, job=NO_JOB), h)[0] == ()


def test_pure_same_inputs_same_outputs():
    o = obs(1000, replace(OK, xids=(XidEvent(79, "", 1.0),)), [ON_CPU], job=NO_JOB)
    assert decide(o) == decide(o)
