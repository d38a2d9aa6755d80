"""ollama.models: auto: the table and the pick (catalog.py), the key, the recorded pick read back
by config.load (modelchoice.py), and when the policy picks, waits or picks again (policy_models.py)."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import pytest

from localaid import catalog, modelchoice, paths, policy
from localaid.catalog import CATALOG, GIB, Inputs, Machine, Pick, better, choose, revisit
from localaid.config import ConfigError, load
from localaid.records import (
    JOB_UNITS, OLLAMA, WEBUI, GpuDevice, GpuObs, History, HostFacts, JobObs, Observation, Probe, ServiceObs,
    UnitState,
)

CPU_BOX = Machine(ram=24 * GIB, cores=2)


def gpu(vram_gib: float, name="NVIDIA GeForce RTX 4070") -> Machine:
    return Machine(ram=32 * GIB, cores=8, gpu_name=name, vram=int(vram_gib * GIB))


# ------------------------------------------------------------------------------- the table
def test_the_table_is_ordered_and_every_entry_says_its_figures():
    sizes = [e.download for e in CATALOG]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for e in CATALOG:
        assert e.name.startswith("qwen3:") and e.kv_per_token > 0 and e.params
        # weights + KV cache of the default context + the compute graph
        assert e.need() == e.download + e.kv_per_token * 4096 + catalog.COMPUTE
    # 8B: 36 layers × 8 KV heads × 128 × 2 (K, V) × 2 bytes = 144 KiB a token
    assert catalog.BY_NAME["qwen3:8b"].kv_per_token == 147456


@pytest.mark.parametrize("vram, model", [
    (4, "qwen3:1.7b"), (6, "qwen3:4b"), (8, "qwen3:8b"), (12, "qwen3:14b"), (16, "qwen3:14b"),
    (24, "qwen3:32b"), (48, "qwen3:32b"), (80, "qwen3:32b"),
])
def test_the_largest_model_that_fits_the_card_with_room_to_spare(vram, model):
    pick = choose(gpu(vram))
    assert pick.model == model
    assert f"{vram} GiB GPU" in pick.reason and pick.basis == f"NVIDIA GeForce RTX 4070, {vram} GiB"
    entry = catalog.BY_NAME[model]
    assert entry.need() <= catalog.gpu_budget(vram * GIB, Inputs()) < vram * GIB - GIB  # the reserve stays free


@pytest.mark.parametrize("ram, cores, model", [
    (4, 2, "qwen3:0.6b"), (8, 2, "qwen3:1.7b"), (24, 2, "qwen3:1.7b"), (16, 8, "qwen3:4b"), (64, 32, "qwen3:4b"),
])
def test_without_a_gpu_the_cpu_tier_by_ram_and_cores(ram, cores, model):
    pick = choose(Machine(ram * GIB, cores))
    assert pick.model == model and "no usable NVIDIA GPU" in pick.reason and "RAM" in pick.basis


def test_a_card_too_small_for_any_model_gets_the_cpu_tier():
    pick = choose(Machine(8 * GIB, 4, "GT 1030", 2 * GIB))
    assert pick.model == "qwen3:1.7b" and "no model fits the 2 GiB GPU fully" in pick.reason


def test_context_parallel_overhead_and_the_embedding_model_take_their_room():
    assert choose(gpu(12)).model == "qwen3:14b"
    assert choose(gpu(12), Inputs(context=32768)).model == "qwen3:8b"  # 32k tokens of KV cache
    assert choose(gpu(12), Inputs(parallel=4)).model == "qwen3:8b"
    assert choose(gpu(12), Inputs(gpu_overhead=2 * GIB)).model == "qwen3:8b"
    assert choose(gpu(8), Inputs(embedding=True)).model == "qwen3:8b"


def test_a_kept_pick_is_replaced_only_by_a_smaller_model_that_fits():
    kept = choose(gpu(12))                                   # qwen3:14b
    assert revisit(kept, gpu(12), Inputs()) is None          # nothing changed
    assert revisit(kept, gpu(24), Inputs()) is None          # a bigger card: no 20 GB download by itself
    assert better(kept.model, gpu(24), Inputs()) == "qwen3:32b"  # ... doctor suggests it
    smaller = revisit(kept, gpu(8, "RTX 4060"), Inputs())     # a smaller card: it no longer fits
    assert smaller is not None and smaller.model == "qwen3:8b"
    assert "qwen3:14b no longer fits" in smaller.reason and smaller.basis == "RTX 4060, 8 GiB"
    assert revisit(kept, CPU_BOX, Inputs()) is None  # the GPU gone (a driver being replaced?): no CPU-sized pick
    assert revisit(choose(CPU_BOX), Machine(4 * GIB, 2), Inputs()).model == "qwen3:0.6b"  # a CPU pick, less RAM
    assert revisit(kept, gpu(12), Inputs(context=32768)).model == "qwen3:8b"  # a changed configuration
    assert revisit(choose(CPU_BOX), gpu(24), Inputs()) is None  # a CPU pick on a new card: kept, suggested
    assert better("qwen3:1.7b", gpu(24), Inputs()) == "qwen3:32b"


# ---------------------------------------------------------------------------- the key
def write(tmp_path, text):
    p = tmp_path / "localaid.yaml"
    p.write_text(text)
    return str(p)


@pytest.fixture
def choice_file(tmp_path, monkeypatch):
    path = tmp_path / "state/model-choice.json"
    monkeypatch.setattr(paths, "MODEL_CHOICE_FILE", str(path))
    return path


def test_auto_is_the_default_and_nothing_is_pulled_for_it_until_picked(tmp_path, choice_file):
    c = load(write(tmp_path, "{}\n"), None)
    assert c.ollama.models_auto and c.ollama.models == () and c.ollama.chosen is None
    assert [m.name for m in c.wanted_models] == ["nomic-embed-text:latest"]
    c = load(write(tmp_path, "ollama:\n  models: auto\n"), None)
    assert c.ollama.models_auto


def test_a_recorded_pick_is_ollama_models_for_every_reader(tmp_path, choice_file):
    pick = modelchoice.write(Pick("qwen3:1.7b", "no usable NVIDIA GPU: …", CPU_BOX.basis, Inputs().key))
    assert oct(choice_file.stat().st_mode & 0o777) == "0o644" and pick.made > 0
    c = load(write(tmp_path, "{}\n"), None)
    assert [(m.name, m.keep_warm) for m in c.ollama.models] == [("qwen3:1.7b", True)]
    assert c.ollama.chosen == pick
    assert [m.name for m in c.wanted_models] == ["qwen3:1.7b", "nomic-embed-text:latest"]
    assert load(write(tmp_path, "{}\n"), None, choice=False).ollama.models == ()  # the file as written
    # a list, or [], is the administrator's: the pick is not used
    c = load(write(tmp_path, "ollama:\n  models: [llama3.2:3b]\n"), None)
    assert not c.ollama.models_auto and [m.name for m in c.ollama.models] == ["llama3.2:3b"] and c.ollama.chosen is None
    c = load(write(tmp_path, "ollama:\n  models: []\n"), None)
    assert c.ollama.models == () and [m.name for m in c.wanted_models] == ["nomic-embed-text:latest"]


@pytest.mark.parametrize("text", ["", "{", "[]", '{"model": ""}', '{"model": 3}', '{"model": "x", "made": "soon"}',
                                  "\udcff"])
def test_a_damaged_choice_file_is_no_pick(choice_file, text):
    choice_file.parent.mkdir(parents=True)
    choice_file.write_text(text, errors="surrogateescape")
    assert modelchoice.read() is None


def test_auto_spelled_otherwise_is_an_error_naming_file_line_and_key(tmp_path, choice_file):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "ollama:\n  models: Auto\n"), None)
    assert str(e.value).endswith('localaid.yaml:2: ollama.models: expected auto or a list of models, got "Auto"')


# ------------------------------------------------------------------------------ the policy
def unit(name, state="active", sub="running"):
    return UnitState(name=name, load_state="loaded", active_state=state, sub_state=sub)


def observe(gpu_obs, now=100.0, host=HostFacts(24 * GIB, 2), setup_text=None):
    jobs = {j: JobObs(j, unit(u, "inactive", "dead")) for j, u in JOB_UNITS.items()}
    if setup_text is not None:
        jobs["ollama-setup"] = JobObs("ollama-setup", unit(JOB_UNITS["ollama-setup"], "activating", "start"),
                                      setup_text, 0.42, "running")
    ok = Probe(True, 0.01, 200)
    services = {OLLAMA: ServiceObs(OLLAMA, unit("ollama.service"), None, ok, models=()),
                WEBUI: ServiceObs(WEBUI, unit("open-webui.service"), None, ok, ready=ok)}
    return Observation(now=now, services=MappingProxyType(services), gpu=gpu_obs, jobs=MappingProxyType(jobs),
                       host=host)


def card(gib: int) -> GpuObs:
    return GpuObs(state="ok", devices=(GpuDevice(0, "NVIDIA GeForce RTX 4090", "GPU-1", gib * GIB, GIB),))


def auto_config(pick: Pick | None = None):
    from localaid.config import Config
    return modelchoice.applied(Config(), pick)


def test_the_pick_is_recorded_before_the_set_up_job_starts_in_the_same_cycle():
    d = policy.decide(auto_config(), observe(card(24)), History())
    kinds = [(a.kind, a.target) for a in d.actions]
    assert kinds.index(("choose-model", "qwen3:32b")) < kinds.index(("start-job", "ollama-setup"))
    pick = next(a.data for a in d.actions if a.kind == "choose-model")
    assert pick.basis == "NVIDIA GeForce RTX 4090, 24 GiB" and "largest that fits" in pick.reason
    assert "model: qwen3:32b picked" in d.status_line and not d.healthy


@pytest.mark.parametrize("state", ["no-driver", "lost", "error"])
def test_no_pick_while_the_gpu_does_not_settle_the_question(state):
    d = policy.decide(auto_config(), observe(GpuObs(state=state, error="…")), History())
    assert not [a for a in d.actions if a.kind == "choose-model"]
    assert f"model: picked once the GPU answers (GPU {state})" in d.status_line and not d.healthy


@pytest.mark.parametrize("state", ["none", "off"])
def test_no_nvidia_gpu_at_all_picks_the_cpu_tier(state):
    d = policy.decide(auto_config(), observe(GpuObs(state=state)), History())
    assert [a.target for a in d.actions if a.kind == "choose-model"] == ["qwen3:1.7b"]


def test_a_kept_pick_is_quiet_and_healthy_and_follows_only_a_smaller_machine():
    pick = choose(Machine(24 * GIB, 2, "NVIDIA GeForce RTX 4090", 24 * GIB), Inputs())
    c = auto_config(pick)
    d = policy.decide(c, observe(card(24)), History())
    assert not [a for a in d.actions if a.kind == "choose-model"] and d.healthy and "model:" not in d.status_line
    assert not [a for a in policy.decide(c, observe(card(48)), History()).actions if a.kind == "choose-model"]
    d = policy.decide(c, observe(card(12)), History())
    assert [(a.target, a.cause) for a in d.actions if a.kind == "choose-model"] == [("qwen3:14b", "revisit")]
    assert not [a for a in policy.decide(c, observe(GpuObs(state="lost")), History()).actions
                if a.kind == "choose-model"]  # a lost GPU may come back: the pick stays


def test_a_list_or_a_ui_host_never_picks():
    from localaid.config import Config, ModelSpec
    c = Config()
    listed = dataclasses.replace(c, ollama=dataclasses.replace(c.ollama, models_auto=False,
                                                               models=(ModelSpec("llama3.2:3b"),)))
    ui_host = dataclasses.replace(c, ollama=dataclasses.replace(c.ollama, enabled=False))
    for cfg in (listed, ui_host):
        assert not [a for a in policy.decide(cfg, observe(card(24)), History()).actions if a.kind == "choose-model"]


def test_pulling_shows_how_far_and_the_stack_is_not_ready_to_chat_yet():
    c = auto_config(choose(CPU_BOX))
    d = policy.decide(c, observe(GpuObs(state="none"), setup_text="pulling qwen3:1.7b 42 % of 1.4 GB, ~3 min"),
                      History())
    assert "ollama setup: pulling qwen3:1.7b 42 % of 1.4 GB, ~3 min" in d.status_line
    assert "(42%)" not in d.status_line and not d.healthy


# ------------------------------------------------------------------------- the daemon's side
def test_the_daemon_records_the_pick_and_runs_the_set_up_jobs_again(tmp_path, choice_file, monkeypatch):
    from localaid import supervisor
    from localaid.act import Actor
    from localaid.records import Action
    actor = Actor(systemd=None)
    pick = choose(CPU_BOX)
    actor.run([Action("choose-model", pick.model, "auto", pick.reason, service=OLLAMA, data=pick)], None)
    assert json.loads(choice_file.read_text())["model"] == "qwen3:1.7b"
    assert actor.recent[-1]["outcome"] == f"ok, recorded in {choice_file}"
    sup = supervisor.Supervisor.__new__(supervisor.Supervisor)
    sup.config, sup.generation = auto_config(), 1
    from localaid.records import JobHistory
    sup.history = History(jobs=MappingProxyType({
        "ollama-setup": JobHistory(generation=1, started_at=100.0, state="started"),   # this cycle, after the pick
        "webui-setup": JobHistory(generation=1, started_at=90.0, state="started"),     # earlier: ran without it
        "devices": JobHistory(generation=1, started_at=100.0, state="done")}))
    sup._take_pick(100.0)
    assert sup.generation == 2 and [m.name for m in sup.config.ollama.models] == ["qwen3:1.7b"]
    assert {j: h.generation for j, h in sup.history.jobs.items()} == \
        {"ollama-setup": 2, "webui-setup": 1, "devices": 1}  # only what ran without the pick runs again
    sup._take_pick(101.0)
    assert sup.generation == 2  # the same pick: nothing new
    actor.close()


def test_a_pick_that_cannot_be_written_is_a_failed_action_not_a_crash(tmp_path, monkeypatch):
    from localaid.act import Actor
    from localaid.records import Action
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(paths, "MODEL_CHOICE_FILE", str(blocker / "model-choice.json"))
    actor = Actor(systemd=None)
    pick = choose(CPU_BOX)
    actor.run([Action("choose-model", pick.model, "auto", pick.reason, data=pick)], None)
    assert actor.recent[-1]["outcome"].startswith("failed: ")
    actor.close()


# ------------------------------------------------------------------------------ what people see
def test_models_suggest_prints_the_tiers_what_fits_and_the_pick(monkeypatch, capsys):
    from localaid.adapters import gpu as gpu_adapter
    from localaid.cli import models as models_cli
    m = Machine(32 * GIB, 8, "NVIDIA GeForce RTX 4070", 12 * GIB)
    monkeypatch.setattr(gpu_adapter, "machine_now", lambda config: (m, card(12)))
    args = type("Args", (), {"json": False, "suggest": True})()
    assert models_cli.suggest(args, auto_config()) == 0
    out = capsys.readouterr().out
    assert out.startswith("This machine: NVIDIA GeForce RTX 4070, 12 GiB; 10.4 GiB of it for a chat model")
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("qwen3:")}
    assert "yes" in rows["qwen3:14b"].split() and rows["qwen3:14b"].endswith("GPU 12 GB  ← would be picked")
    assert "no" in rows["qwen3:32b"].split() and "GPU 24 GB" in rows["qwen3:32b"]
    assert "Would pick qwen3:14b: largest that fits the 12 GiB GPU" in out
    # once picked for a smaller card, the bigger one now here is a suggestion with the line to write
    kept = choose(gpu(8))
    assert models_cli.suggest(args, auto_config(kept)) == 0
    out = capsys.readouterr().out
    assert "← picked" in next(ln for ln in out.splitlines() if ln.startswith("qwen3:8b"))
    assert "to use it, set ollama.models: [qwen3:14b]" in out


def test_status_shows_the_pick_and_why():
    from localaid.cli.status import _choice_lines
    from localaid.report import _models
    pick = dataclasses.replace(choose(CPU_BOX), made=1_790_000_000.0)
    lines = _choice_lines(_models(auto_config(pick)))
    assert lines[0].startswith("chat model (ollama.models: auto): qwen3:1.7b, picked 2026-")
    assert lines[0].endswith("for no GPU, 24 GiB RAM, 2 cores")
    assert lines[1] == f"  why: {pick.reason}  (other sizes: localaid models --suggest)"
    assert _choice_lines(_models(auto_config())) == ["chat model (ollama.models: auto): not picked yet, see the status line"]


def test_doctor_names_the_pick_and_suggests_a_bigger_model_without_pulling_it(monkeypatch):
    from localaid.adapters import gpu as gpu_adapter
    from localaid.provision.ollama.doctor import _pick_check
    monkeypatch.setattr(gpu_adapter, "machine_now", lambda config: (gpu(24), card(24)))
    c = _pick_check(auto_config(choose(gpu(24))))
    assert c.ok is True and c.message.startswith("ollama.models: auto: qwen3:32b picked for NVIDIA GeForce RTX 4070, 24 GiB")
    c = _pick_check(auto_config(choose(gpu(12))))
    assert c.ok is None and c.message.endswith("this machine (NVIDIA GeForce RTX 4070, 24 GiB) now fits qwen3:32b")
    assert c.advice.startswith("to use it: set ollama.models: [qwen3:32b] in /etc/localaid/localaid.yaml")
    monkeypatch.setattr(gpu_adapter, "machine_now", lambda config: (None, GpuObs(state="no-driver")))
    c = _pick_check(auto_config())
    assert c.ok is None and c.message == "ollama.models: auto: no model picked yet: the GPU does not answer (no-driver)"


def test_status_says_where_to_sign_in():
    from localaid.cli.status import render
    from localaid.report import _webui
    doc = {"status_line": "ollama ok", "services": [], "gpu": {"state": "none"}, "webui": _webui(auto_config())}
    assert "Open WebUI: http://localhost:3000, sign in as admin@localhost (password: sudo cat " \
           "/etc/localaid/webui-admin-password)" in render(doc, 1.0, "active")


def test_vram_advice_and_the_pick_never_disagree_on_a_catalogue_model():
    from localaid.vram import vram_note
    for vram in (4, 6, 8, 12, 16, 24, 48):
        m = gpu(vram)
        picked = choose(m).model
        fits, text = vram_note(catalog.BY_NAME[picked].download, m.vram, picked)
        assert fits is True and text.startswith(f"{picked} fits this {vram} GB GPU"), text
    fits, text = vram_note(catalog.BY_NAME["qwen3:32b"].download, 12 * GIB, "qwen3:32b")
    assert fits is False and "part of it would run on the CPU" in text
    # any other model: the rule of thumb as before
    assert vram_note(int(5.2e9), 12 * GIB, "deepseek-r1:8b")[1].startswith("5.2 GB model fits this 12 GB GPU")


def test_the_pick_is_not_preloaded_before_the_set_up_job_has_pulled_it():
    """A preload of a model not pulled yet fails, and is tried again only model_load_grace (5 min)
    later: none is sent while the set-up job is started, queued or at work."""
    c = auto_config(choose(CPU_BOX))
    d = policy.decide(c, observe(GpuObs(state="none"), now=100.0), History())  # starts the set-up jobs
    assert ("start-job", "ollama-setup") in [(a.kind, a.target) for a in d.actions]
    assert not [a for a in d.actions if a.kind == "preload"]
    d = policy.decide(c, observe(GpuObs(state="none"), now=101.0, setup_text="pulling qwen3:1.7b 12 % of 1.4 GB"),
                      d.history)  # at work
    assert not [a for a in d.actions if a.kind == "preload"]
    queued = observe(GpuObs(state="none"), now=102.0)
    jobs = dict(queued.jobs)
    jobs["ollama-setup"] = JobObs("ollama-setup", dataclasses.replace(unit(JOB_UNITS["ollama-setup"], "inactive", "dead"),
                                                                      job=True))
    d2 = policy.decide(c, dataclasses.replace(queued, jobs=MappingProxyType(jobs)), History())
    assert not [a for a in d2.actions if a.kind == "preload"]
    # the job seen finished: the pick is preloaded
    d = policy.decide(c, observe(GpuObs(state="none"), now=103.0), d.history)
    assert [a.target for a in d.actions if a.kind == "preload"] == ["qwen3:1.7b"]


def test_a_ui_host_picks_nothing_and_says_nothing_of_a_pick(tmp_path, choice_file, monkeypatch):
    """ollama.enabled: false (a UI host): auto is the default there too, but there is no Ollama of
    its own to pull into: no pick, no stale one applied, no "not picked yet" in status or doctor."""
    from localaid.cli.status import _choice_lines
    from localaid.provision.ollama.doctor import doctor_checks
    from localaid.report import _models
    modelchoice.write(Pick("qwen3:8b", "from when this host had a GPU", "RTX 4070, 12 GiB"))
    c = load(write(tmp_path, "ollama:\n  enabled: false\nwebui:\n  ollama_urls: [http://10.0.0.5:11434]\n"), None)
    assert c.ollama.models_auto and not c.ollama.picks_model and c.ollama.models == () and c.ollama.chosen is None
    assert _choice_lines(_models(c)) == []
    monkeypatch.setattr("localaid.provision.ollama.doctor._pick_check", lambda config: pytest.fail("asked"))
    monkeypatch.setattr("localaid.provision.ollama.doctor._install_checks", lambda cfg, layout: [])
    monkeypatch.setattr("localaid.provision.ollama.doctor._unit_checks", lambda cfg, layout: [])
    monkeypatch.setattr("localaid.provision.ollama.doctor._api_checks", lambda cfg, models: [])
    assert doctor_checks(c) == []
