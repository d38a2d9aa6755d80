"""decide() over every transition, with a fake clock: no processes, no I/O."""

from dataclasses import replace
from types import MappingProxyType

import pytest

from localaid import policy
from localaid.config import Config, ModelSpec
from localaid.records import (
    JOB_UNITS, OLLAMA, WEBUI, GpuObs, History, JobHistory, JobObs, LoadedModel, Observation, Probe, ServiceObs, UnitState,
)

OK = Probe(True, 0.01, 200)
SLOW_OK = Probe(True, 0.95, 200)
HUNG = Probe(False, 1.0, None, "timeout after 1 s")
ERR500 = Probe(False, 0.01, 500, "HTTP 500")
REFUSED = Probe(False, 0.0, None, "connection refused")


def cfg(**health):
    c = Config()
    h = replace(c.health, **{"ollama_start_grace": 10.0, "webui_start_grace": 20.0, **health})
    return replace(c, health=h)


def unit(name, state="active", sub="running", enter=0.0, n=0, result="success", load="loaded", job=False):
    return UnitState(name=name, load_state=load, active_state=state, sub_state=sub, n_restarts=n,
                     result=result, active_enter_mono=enter, job=job)


def jobs_idle():
    return {j: JobObs(j, unit(u, state="inactive", sub="dead")) for j, u in JOB_UNITS.items()}


def observe(now, ollama=None, webui=None, models=None, maintenance=(), generation=1, jobs=None,
            in_flight=()):
    services = {}
    if ollama is not False:
        u, p = ollama or (unit("ollama.service"), OK)
        services[OLLAMA] = ServiceObs(OLLAMA, u, None, p, models=models if models is not None else ())
    if webui is not False:
        u, p = webui or (unit("open-webui.service"), OK)
        services[WEBUI] = ServiceObs(WEBUI, u, None, p, ready=OK)
    return Observation(now=now, services=MappingProxyType(services), gpu=GpuObs(state="none"),
                       jobs=MappingProxyType(jobs if jobs is not None else jobs_idle()),
                       maintenance=frozenset(maintenance), generation=generation,
                       in_flight=frozenset(in_flight))


# Two healthy cycles: the set-up jobs are started, then seen finished.
SETTLED = [observe(98.0), observe(99.0)]
# The same as a history: the set-up jobs have run for this configuration (keep-warm sends no
# preload while they are started or at work: the models may not be pulled yet).
JOBS_DONE = History(jobs=MappingProxyType({j: JobHistory(generation=1, state="done") for j in JOB_UNITS}))


def run(c, observations, hist=None):
    hist = hist or History()
    decisions = []
    for o in observations:
        d = policy.decide(c, o, hist)
        hist = d.history
        decisions.append(d)
    return decisions


def service_actions(d):
    return [(a.kind, a.target, a.cause) for a in d.actions if a.kind != "start-job"]


# ----------------------------------------------------------------------------- healthy, grace
def test_healthy_stack_no_actions_and_one_line_status():
    d = run(cfg(), [observe(100.0)])[0]
    assert service_actions(d) == []
    assert d.healthy
    assert d.status_line.startswith("ollama ok · ")
    assert "open-webui ok :3000" in d.status_line


def test_slow_but_answering_within_timeout_is_never_restarted():
    c = cfg()
    ds = run(c, [observe(100.0 + i, ollama=(unit("ollama.service"), SLOW_OK)) for i in range(600)])
    assert all(service_actions(d) == [] for d in ds)
    assert ds[-1].history.services[OLLAMA].state == "ok"


def test_failures_inside_start_grace_do_not_count():
    c = cfg()
    u = unit("ollama.service", enter=100.0)
    ds = run(c, [observe(100.0 + i, ollama=(u, REFUSED)) for i in range(10)])  # grace is 10 s
    assert all(service_actions(d) == [] for d in ds)
    assert ds[-1].history.services[OLLAMA].state == "starting"
    assert "grace" in ds[-1].history.services[OLLAMA].reason


def test_never_answering_after_grace_is_restarted():
    c = cfg()
    u = unit("ollama.service", enter=100.0)
    ds = run(c, [observe(100.0 + i, ollama=(u, REFUSED)) for i in range(14)])
    kinds = [service_actions(d) for d in ds]
    assert kinds[:12] == [[]] * 12
    assert kinds[12] == [("kill-restart", "ollama.service", "unhealthy")]


# ------------------------------------------------------------------------------------- hangs
def test_hung_service_restarted_after_n_consecutive_failures():
    c = cfg(failures=3)
    ok = [observe(100.0 + i) for i in range(3)]
    hung = [observe(103.0 + i, ollama=(unit("ollama.service"), HUNG)) for i in range(3)]
    ds = run(c, ok + hung)
    assert [service_actions(d) for d in ds[3:5]] == [[], []]
    assert service_actions(ds[5]) == [("kill-restart", "ollama.service", "hung")]
    a = [x for x in ds[5].actions if x.kind == "kill-restart"][0]
    assert "3 probes failed" in a.evidence and "timeout" in a.evidence
    assert ds[5].history.services[OLLAMA].state == "restarting"
    assert "ollama restarting (hung" in ds[5].status_line and "1/5 in 10 min" in ds[5].status_line


def test_timeouts_are_rechecked_at_once_other_failures_at_the_interval():
    """While a service's probes time out (each already waited health.timeout) the next cycle goes
    at once; a quick failure (HTTP 500, refused) keeps the interval; once acted on, back to it."""
    c = cfg(failures=3)
    ok = [observe(100.0 + i) for i in range(3)]
    assert [d.recheck for d in run(c, ok)] == [1.0] * 3
    hung = [observe(103.0 + i * 0.5, ollama=(unit("ollama.service"), HUNG)) for i in range(3)]
    assert [d.recheck for d in run(c, ok + hung)][3:] == [0.0, 0.0, 1.0]  # third: restart queued
    err = [observe(103.0 + i, ollama=(unit("ollama.service"), ERR500)) for i in range(3)]
    assert [d.recheck for d in run(c, ok + err)][3:] == [1.0, 1.0, 1.0]
    in_grace = [observe(100.0 + i, ollama=(unit("ollama.service", enter=100.0), HUNG)) for i in range(3)]
    assert [d.recheck for d in run(c, in_grace)] == [1.0] * 3  # not counting: no hurry


def test_one_success_resets_the_failure_count():
    c = cfg(failures=3)
    seq = [HUNG, HUNG, OK, HUNG, HUNG, OK]
    ds = run(c, [observe(100.0 + i, ollama=(unit("ollama.service"), p)) for i, p in enumerate(seq)])
    assert all(service_actions(d) == [] for d in ds)


def test_http_500_counts_as_unhealthy():
    c = cfg(failures=2)
    ds = run(c, [observe(100.0 + i, ollama=(unit("ollama.service"), ERR500)) for i in range(2)])
    assert service_actions(ds[1]) == [("kill-restart", "ollama.service", "unhealthy")]


def _hang_cycles(c, start, n, enter):
    return [observe(start + i, ollama=(unit("ollama.service", enter=enter), HUNG)) for i in range(n)]


def test_backoff_between_restarts_grows_and_is_capped():
    c = cfg(failures=1, backoff_initial=2.0, backoff_max=16.0, restart_limit=100, ollama_start_grace=0.0)
    hist = History()
    restart_times = []
    t = 100.0
    while t < 400.0:
        d = policy.decide(c, observe(t, ollama=(unit("ollama.service"), HUNG)), hist)
        hist = d.history
        if service_actions(d):
            restart_times.append(t)
        t += 0.5
    gaps = [b - a for a, b in zip(restart_times, restart_times[1:])]
    assert gaps[0] <= 2.0 * 1.2 + 0.5
    assert all(later >= earlier * 0.6 for earlier, later in zip(gaps, gaps[1:]))  # grows (with jitter)
    assert max(gaps) <= 16.0 + 0.5  # capped
    assert max(gaps) >= 16.0 * 0.8


def test_restart_budget_then_degraded_and_slow_retry():
    c = cfg(failures=1, backoff_initial=1.0, backoff_max=60.0, restart_limit=3, restart_window=600.0,
            ollama_start_grace=0.0)
    hist = History()
    restarts = []
    for i in range(0, 400):
        t = 100.0 + i
        d = policy.decide(c, observe(t, ollama=(unit("ollama.service"), HUNG)), hist)
        hist = d.history
        if service_actions(d):
            restarts.append(t)
    assert len(restarts) >= 4
    # After three restarts the budget is spent: the next ones are backoff_max apart.
    assert restarts[3] - restarts[2] >= 60.0
    assert all(b - a >= 60.0 for a, b in zip(restarts[3:], restarts[4:]))
    assert hist.services[OLLAMA].state == "degraded"
    assert "restart budget spent" in hist.services[OLLAMA].reason or "next restart" in hist.services[OLLAMA].reason
    assert "ollama degraded" in d.status_line


def test_budget_window_slides():
    c = cfg(failures=1, backoff_initial=1.0, backoff_max=2.0, restart_limit=2, restart_window=50.0,
            ollama_start_grace=0.0)
    hist = History()
    d = None
    for t in (100.0, 103.0):
        d = policy.decide(c, observe(t, ollama=(unit("ollama.service"), HUNG)), hist)
        hist = d.history
    assert len(hist.services[OLLAMA].restarts) == 2
    d = policy.decide(c, observe(200.0, ollama=(unit("ollama.service"), OK)), hist)
    assert d.history.services[OLLAMA].restarts == ()
    assert d.history.services[OLLAMA].state == "ok"


def test_recovery_is_noted_in_the_journal():
    c = cfg(failures=1, ollama_start_grace=0.0)
    obs = [observe(100.0, ollama=(unit("ollama.service"), HUNG)),
           observe(101.0, ollama=(unit("ollama.service", enter=100.5), OK))]
    ds = run(c, obs)
    assert any("healthy again" in n for n in ds[1].notes)


# ------------------------------------------------------------------- crashes, failed, stopped
def test_crash_left_to_systemd_but_counted():
    c = cfg()
    ds = run(c, [
        observe(100.0),
        observe(101.0, ollama=(unit("ollama.service", state="activating", sub="auto-restart", n=1,
                                    result="signal"), None)),
    ])
    assert service_actions(ds[1]) == []
    assert ds[1].history.services[OLLAMA].state == "restarting"
    assert any("restarted by systemd (signal)" in n for n in ds[1].notes)


def test_crash_loop_marks_degraded_without_our_restarts():
    c = cfg(restart_limit=3)
    ds = run(c, crash_loop(4, every=5))
    assert all(service_actions(d) == [] for d in ds)
    assert ds[-1].history.services[OLLAMA].state == "degraded"
    assert "crash loop" in ds[-1].status_line


def test_failed_unit_is_reset_and_started_with_backoff():
    c = cfg(backoff_initial=10.0)
    failed = unit("open-webui.service", state="failed", sub="failed", result="start-limit-hit")
    ds = run(c, SETTLED + [observe(100.0 + i, webui=(failed, REFUSED)) for i in range(5)])[2:]
    assert service_actions(ds[0]) == [("start", "open-webui.service", "failed")]
    assert all(service_actions(d) == [] for d in ds[1:])  # backoff holds


def test_admin_stop_is_respected():
    c = cfg()
    stopped = unit("ollama.service", state="inactive", sub="dead", result="success")
    ds = run(c, [observe(100.0)] + [observe(101.0 + i, ollama=(stopped, REFUSED)) for i in range(100)])
    assert all(service_actions(d) == [] for d in ds)
    assert ds[-1].history.services[OLLAMA].state == "stopped"
    assert "stopped by admin" in ds[-1].status_line


def test_started_again_after_admin_stop_is_supervised_again():
    c = cfg(failures=1, ollama_start_grace=0.0)
    stopped = unit("ollama.service", state="inactive", sub="dead")
    ds = run(c, [observe(100.0, ollama=(stopped, REFUSED)),
                 observe(101.0, ollama=(unit("ollama.service", enter=100.5), OK)),
                 observe(102.0, ollama=(unit("ollama.service", enter=100.5), HUNG))])
    assert service_actions(ds[2]) == [("kill-restart", "ollama.service", "hung")]


def test_missing_unit_is_reported_not_repaired():
    c = cfg()
    missing = unit("ollama.service", state="inactive", sub="dead", load="not-found")
    d = run(c, SETTLED + [observe(100.0, ollama=(missing, REFUSED))])[-1]
    assert service_actions(d) == []
    assert "ollama missing (not installed yet)" in d.status_line


def test_systemd_unreachable_means_no_action():
    c = cfg()
    o = observe(100.0)
    services = dict(o.services)
    services[OLLAMA] = ServiceObs(OLLAMA, None, "did not answer in time", HUNG)
    d = policy.decide(c, replace(o, services=MappingProxyType(services)), History())
    assert service_actions(d) == []
    assert d.history.services[OLLAMA].state == "unknown"


def test_maintenance_means_hands_off():
    c = cfg(failures=1, ollama_start_grace=0.0)
    ds = run(c, [observe(100.0 + i, ollama=(unit("ollama.service"), HUNG), maintenance={OLLAMA})
                 for i in range(10)])
    assert all(service_actions(d) == [] for d in ds)
    assert "set-up or upgrade at work" in ds[-1].status_line


# ------------------------------------------------------------------------------ dependencies
def test_webui_not_blamed_while_ollama_is_down():
    c = cfg(failures=1, ollama_start_grace=0.0, webui_start_grace=0.0, backoff_initial=1000.0)
    ds = run(c, [observe(100.0 + i, ollama=(unit("ollama.service"), HUNG),
                         webui=(unit("open-webui.service"), HUNG)) for i in range(5)])
    targets = [a[1] for d in ds for a in service_actions(d)]
    assert "open-webui.service" not in targets
    assert ds[-1].history.services[WEBUI].state == "waiting"


def test_webui_starting_until_ready_within_grace():
    c = cfg()
    u = unit("open-webui.service", enter=100.0)
    o = observe(105.0, webui=(u, OK))
    services = dict(o.services)
    services[WEBUI] = ServiceObs(WEBUI, u, None, OK, ready=Probe(False, 0.01, 503, "HTTP 503"))
    d = policy.decide(c, replace(o, services=MappingProxyType(services)), History())
    assert d.history.services[WEBUI].state == "starting"
    assert not d.healthy


def test_webui_disabled_is_left_out():
    c = cfg()
    c = replace(c, webui=replace(c.webui, enabled=False))
    d = run(c, [observe(100.0, webui=False)])[0]
    assert "open-webui" not in d.status_line
    assert d.healthy


# -------------------------------------------------------------------------------------- jobs
def test_jobs_started_once_per_configuration_generation():
    c = cfg()
    ds = run(c, [observe(100.0), observe(101.0), observe(102.0, generation=2)])
    jobs = [sorted(a.target for a in d.actions if a.kind == "start-job") for d in ds]
    assert jobs[0] == ["devices", "ollama-setup", "webui-setup"]
    assert jobs[1] == []
    assert jobs[2] == ["devices", "ollama-setup", "webui-setup"]


def test_a_service_never_installed_is_not_installed_not_stopped_by_admin():
    """Offline, with the shipped defaults: both set-up jobs fail. STATUS said "open-webui stopped
    (stopped by admin; ...)" about a service nobody stopped, in a 465-character line."""
    c = cfg()
    absent = unit("ollama.service", state="inactive", sub="dead", load="not-found")
    inactive = unit("open-webui.service", state="inactive", sub="dead")
    why_o = "install script download failed: cannot connect to ollama.com: Temporary failure in name resolution"
    why_w = ("Open WebUI 0.12.4: installing open-webui==0.12.4 with pip failed: ERROR: No matching distribution "
             "found for open-webui==0.12.4")
    failed = jobs_idle()
    for job, why in (("ollama-setup", why_o), ("webui-setup", why_w)):
        failed[job] = JobObs(job, unit(JOB_UNITS[job], state="failed", sub="failed", result="exit-code"), why)
    ds = run(c, [observe(100.0, ollama=(absent, REFUSED), webui=(inactive, REFUSED)),
                 observe(101.0, ollama=(absent, REFUSED), webui=(inactive, REFUSED), jobs=failed),
                 observe(105.0, ollama=(absent, REFUSED), webui=(inactive, REFUSED), jobs=failed)])
    line = ds[-1].status_line
    assert "stopped by admin" not in line
    assert "ollama not installed (setup failed: install script download failed: cannot connect" in line
    assert "open-webui not installed (setup failed: Open WebUI 0.12.4: installing open-webui==0.12." in line
    assert "for open-webui==0.12.4; retry in" in line  # the end of the words survives the cut
    assert "retry in" in line and "ollama setup failed" not in line and len(line) <= 320, (len(line), line)
    assert [s.state for s in ds[-1].services] == ["not installed", "not installed"]
    assert not ds[-1].healthy


def test_a_job_only_the_admin_can_fix_is_said_briefly_and_not_retried():
    """Debian 13 without a usable interpreter: the set-up job ends "blocked". STATUS says so in a
    few words, and the job waits for a configuration change instead of failing every minute."""
    c = cfg()
    inactive = unit("open-webui.service", state="inactive", sub="dead")
    short = "needs Python 3.11 or 3.12, see localaid doctor"
    blocked = jobs_idle()
    blocked["webui-setup"] = JobObs("webui-setup", unit(JOB_UNITS["webui-setup"], state="failed", sub="failed",
                                                         result="exit-code"), short, progress_state="blocked")
    obs = [observe(100.0, webui=(inactive, REFUSED)),
           *(observe(t, webui=(inactive, REFUSED), jobs=blocked) for t in (101.0, 500.0, 4000.0, 90000.0))]
    ds = run(c, obs + [observe(90001.0, webui=(inactive, REFUSED), jobs=blocked, generation=2)])
    assert "open-webui not installed (needs Python 3.11 or 3.12, see localaid doctor)" in ds[2].status_line
    assert "stopped by admin" not in ds[2].status_line and "retry" not in ds[2].status_line
    assert "open-webui setup" not in ds[2].status_line  # told once, inside the service's fragment
    assert any("needs the administrator" in n for n in ds[1].notes)
    assert [a.target for d in ds[1:5] for a in d.actions if a.kind == "start-job"] == []
    assert [a.target for a in ds[5].actions if a.kind == "start-job" and a.target == "webui-setup"] == \
        ["webui-setup"]  # the configuration changed: tried again


def test_failed_job_retried_with_backoff_and_reported():
    c = cfg()
    running = jobs_idle()
    running["ollama-setup"] = JobObs("ollama-setup", unit("localaid-ollama-setup.service", state="activating",
                                                           sub="start"), "downloading install script", 0.4)
    failed = jobs_idle()
    failed["ollama-setup"] = JobObs("ollama-setup", unit("localaid-ollama-setup.service", state="failed",
                                                          sub="failed", result="exit-code"),
                                    "install script download failed: HTTP 404 from https://x/install.sh")
    ds = run(c, [observe(100.0), observe(101.0, jobs=running), observe(102.0, jobs=failed),
                 observe(110.0, jobs=failed), observe(133.0, jobs=failed)])
    assert "ollama setup: downloading install script (40%)" in ds[1].status_line
    assert any("ollama setup failed" in n and "HTTP 404" in n for n in ds[2].notes)
    assert "ollama setup failed: install script download failed" in ds[3].status_line
    assert [a.target for a in ds[3].actions if a.kind == "start-job"] == []
    assert [a.target for a in ds[4].actions if a.kind == "start-job"] == ["ollama-setup"]


# ------------------------------------------------------------------------------------ models
def test_keep_warm_models_preloaded_once_until_grace():
    c = cfg()
    c = replace(c, ollama=replace(c.ollama, models=(ModelSpec("deepseek-r1:8b"), ModelSpec("tiny", False))))
    ds = run(c, [observe(100.0), observe(101.0, in_flight={"preload:deepseek-r1:8b"}), observe(102.0),
                 observe(500.0)], JOBS_DONE)
    pre = [[a.target for a in d.actions if a.kind == "preload"] for d in ds]
    assert pre == [["deepseek-r1:8b"], [], [], ["deepseek-r1:8b"]]


def test_a_new_ollama_process_is_warmed_at_once_whoever_restarted_it():
    """Issue: `systemctl restart ollama` 60 s after a preload left the model unloaded for the rest
    of model_load_grace (5 min by default). The hold is per Ollama process."""
    c = Config()  # the shipped defaults: model_load_grace 5 min
    c = replace(c, ollama=replace(c.ollama, models=(ModelSpec("deepseek-r1:8b"),)))

    def ollama(pid, started):
        return (replace(unit("ollama.service", enter=started), main_pid=pid), OK)
    ds = run(c, [observe(1000.0, ollama=ollama(10, 900.0)),
                 observe(1010.0, ollama=ollama(10, 900.0)),        # same process: held
                 observe(1060.0, ollama=ollama(22, 1059.0)),       # restarted by the admin
                 observe(1061.0, ollama=ollama(22, 1059.0)),       # same new process: held again
                 observe(1070.0, ollama=ollama(22, 1059.0)),
                 observe(1080.0, ollama=ollama(31, 1079.5))], JOBS_DONE)      # crashed and restarted
    pre = [[a.target for a in d.actions if a.kind == "preload"] for d in ds]
    assert pre == [["deepseek-r1:8b"], [], ["deepseek-r1:8b"], [], [], ["deepseek-r1:8b"]]
    assert ds[-1].history.warm_process == (31, 1079.5)


def test_a_failing_preload_of_one_process_is_held_for_the_grace():
    c = Config()
    c = replace(c, ollama=replace(c.ollama, models=(ModelSpec("llama3"),)))
    ol = (replace(unit("ollama.service", enter=50.0), main_pid=7), OK)
    times = [100.0, 101.0, 200.0, 100.0 + c.health.model_load_grace - 1, 100.0 + c.health.model_load_grace]
    ds = run(c, [observe(t, ollama=ol) for t in times], JOBS_DONE)
    assert [len([a for a in d.actions if a.kind == "preload"]) for d in ds] == [1, 0, 0, 0, 1]


def test_warm_model_not_preloaded_again_while_loaded():
    c = cfg()
    c = replace(c, ollama=replace(c.ollama, models=(ModelSpec("llama3"),)))
    d = run(c, [observe(100.0, models=(LoadedModel("llama3:latest", 5, 5),))])[0]
    assert [a for a in d.actions if a.kind == "preload"] == []
    assert "1 model warm" in d.status_line


def test_no_preload_while_ollama_unhealthy():
    c = cfg(failures=5)
    c = replace(c, ollama=replace(c.ollama, models=(ModelSpec("llama3"),)))
    d = run(c, [observe(100.0, ollama=(unit("ollama.service"), HUNG))])[0]
    assert [a for a in d.actions if a.kind == "preload"] == []


# ------------------------------------------------------------------------------------ helpers
@pytest.mark.parametrize("n", range(1, 30))
def test_jitter_is_deterministic_and_bounded(n):
    assert policy.jitter("ollama", n) == policy.jitter("ollama", n)
    assert 0.8 <= policy.jitter("ollama", n) < 1.2


def test_jitter_spreads_services_apart():
    assert len({round(policy.jitter(k, 1), 4) for k in ("ollama", "open-webui", "a", "b")}) >= 3


def test_crash_noticed_in_the_journal_when_systemd_starts_restarting():
    ds = run(cfg(), [observe(100.0),
                     observe(101.0, ollama=(unit("ollama.service", state="activating", sub="auto-restart"), None))])
    assert "ollama: ok -> restarting (systemd restarting it after a crash)" in ds[1].notes


def crash_loop(crashes, every):
    """A healthy cycle, then systemd restarting Ollama after a crash every `every` seconds."""
    return [observe(100.0)] + [
        observe(100.0 + every * i, ollama=(unit("ollama.service", state="activating", sub="auto-restart", n=i,
                                                result="exit-code"), None)) for i in range(1, crashes + 1)]


def test_crash_loop_still_named_while_momentarily_up():
    c = cfg(restart_limit=3)
    obs = crash_loop(3, every=4)
    obs.append(observe(113.0, ollama=(unit("ollama.service", n=3, enter=112.5), OK)))
    d = run(c, obs)[-1]
    assert d.history.services[OLLAMA].state == "degraded"
    assert d.history.services[OLLAMA].reason == "answering, but 3 restarts in 10 min (crash loop)"


def webui_setup_running():
    """The job states with localaid-webui-setup.service installing open-webui."""
    jobs = jobs_idle()
    jobs["webui-setup"] = JobObs("webui-setup", unit("localaid-webui-setup.service", state="activating",
                                                      sub="start"), "installing open-webui 0.12.4", None)
    return jobs


def test_service_being_set_up_is_installing_not_stopped_by_admin():
    c = cfg()
    inactive = unit("open-webui.service", state="inactive", sub="dead")
    running = webui_setup_running()
    done = jobs_idle()
    ds = run(c, [observe(100.0, webui=(inactive, REFUSED)), observe(101.0, webui=(inactive, REFUSED), jobs=running),
                 observe(102.0, webui=(inactive, REFUSED), jobs=done)])
    assert [d.history.services[WEBUI].state for d in ds] == ["installing", "installing", "stopped"]
    assert "open-webui installing (installing open-webui 0.12.4)" in ds[1].status_line
    assert "open-webui setup" not in ds[1].status_line  # told once, in the service's own fragment


def test_stopped_service_that_served_before_is_stopped_even_while_its_setup_job_runs():
    c = cfg()
    inactive = unit("open-webui.service", state="inactive", sub="dead")
    ds = run(c, [observe(100.0), observe(101.0, webui=(inactive, REFUSED), jobs=webui_setup_running())])
    assert ds[1].history.services[WEBUI].state == "stopped"


# ------------------------------------------------------------------- a start that is working
def _webui_start(cpu_per_s: float, refused: bool = True):
    """Observations every second of an Open WebUI started at 0 that has not opened its port
    (or hangs with it open), its cgroup using `cpu_per_s` of a core."""
    def at(t):
        u = unit("open-webui.service", enter=0.0)
        u = replace(u, control_group="/system.slice/open-webui.service")
        probe = REFUSED if refused else HUNG
        return observe(t, webui=(u, probe))
    obs = []
    for t in range(0, 400):
        o = at(float(t))
        s = o.services[WEBUI]
        obs.append(replace(o, services=MappingProxyType({**o.services, WEBUI: replace(s, cpu_seconds=t * cpu_per_s)})))
    return obs


def test_a_start_that_keeps_working_past_the_grace_is_never_restarted():
    """Open WebUI migrating its database for minutes before it listens (shipped defaults:
    3 min grace): starting, never killed, while its cgroup uses CPU."""
    c = Config()
    ds = run(c, _webui_start(0.5))
    assert not [a for d in ds for a in d.actions if a.service == WEBUI and a.kind in ("kill-restart", "restart")]
    last = [s for s in ds[-1].services if s.name == WEBUI][0]
    assert last.state == "starting" and "port not open yet (migrating?)" in last.reason


def test_a_silent_idle_start_is_repaired_after_the_grace():
    c = Config()
    ds = run(c, _webui_start(0.0))
    kills = [i for i, d in enumerate(ds) for a in d.actions if a.service == WEBUI and a.kind == "kill-restart"]
    assert kills and c.health.webui_start_grace <= kills[0] <= c.health.webui_start_grace + c.health.failures + 1


def test_a_busy_process_with_its_port_open_but_not_answering_is_hung_not_starting():
    c = Config()
    ds = run(c, _webui_start(0.9, refused=False))
    assert any(a.kind == "kill-restart" and a.service == WEBUI for d in ds for a in d.actions)


def test_working_is_waited_for_only_up_to_busy_start_limit():
    c = Config()
    c = replace(c, health=replace(c.health, busy_start_limit=240.0))
    ds = run(c, _webui_start(0.5))
    kills = [i for i, d in enumerate(ds) for a in d.actions if a.service == WEBUI and a.kind == "kill-restart"]
    assert kills and 240 <= kills[0] <= 240 + c.health.failures + 1


def test_an_upgrade_at_work_shows_its_own_words_once():
    c = cfg()
    running = jobs_idle()
    running["webui-setup"] = JobObs("webui-setup", unit("localaid-webui-setup.service", state="activating",
                                                         sub="start"),
                                    "waiting for Open WebUI 0.12.5 to answer (working for 200 s, port not "
                                    "open yet (migrating?))", 0.9)
    d = run(c, [observe(100.0, maintenance={WEBUI}, jobs=running)])[0]
    assert "open-webui maintenance (waiting for Open WebUI 0.12.5" in d.status_line
    assert "migrating?" in d.status_line and "open-webui setup" not in d.status_line


# ------------------------------------------------------------------------------ roles (hosts)
def test_job_words_that_name_the_job_are_not_said_twice():
    c = cfg()
    failed = jobs_idle()
    failed["ollama-setup"] = JobObs("ollama-setup", unit("localaid-ollama-setup.service", state="failed",
                                                          sub="failed", result="exit-code"),
                                    "ollama setup failed: install script /x/install.sh: No such file or directory")
    ds = run(c, [observe(100.0), observe(102.0, jobs=failed), observe(103.0, jobs=failed)])
    assert "ollama setup failed: install script /x/install.sh" in ds[-1].status_line
    assert "failed: ollama setup failed" not in ds[-1].status_line


def test_a_ui_host_has_no_ollama_of_its_own():
    """ollama.enabled: false: nothing about a local Ollama is watched, installed or waited for."""
    c = cfg()
    c = replace(c, ollama=replace(c.ollama, enabled=False),
                webui=replace(c.webui, ollama_urls=("http://10.0.0.2:11434",)))
    o = observe(100.0)
    o = replace(o, services=MappingProxyType({k: v for k, v in o.services.items() if k != OLLAMA}))
    d = run(c, [o])[0]
    assert "ollama" not in d.status_line.replace("open-webui", ""), d.status_line
    assert "ollama-setup" not in [a.target for a in d.actions if a.kind == "start-job"]
    assert [s.name for s in d.services] == [WEBUI] and d.history.services[WEBUI].state == "ok"


def test_an_allow_list_this_host_cannot_enforce_is_said_in_status():
    c = cfg()
    d = run(c, [replace(observe(100.0), exposed=True)])[0]
    assert "ollama API open to the network (allow_from not enforced here, see localaid doctor)" in d.status_line
    assert "open to the network" not in run(c, [observe(100.0)])[0].status_line
