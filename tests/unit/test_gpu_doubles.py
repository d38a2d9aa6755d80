"""The GPU doubles together, as localaid meets them: the fake Ollama (tests/fakes/ollama/ollama, a
real process) and the fake NVML library (through the real nvidia-ml-py and localaid's Gpu
adapter) share one state file. Memory moves when models load, a model too big for the card is
offloaded in part, the GPU can be lost after start, discovery happens only at start; and the
GPU policy judges what they show."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from localaid import policy_gpu
from localaid.config import Config
from localaid.records import LoadedModel, Observation, Probe, ServiceObs, UnitState
from tests.fakes.nvml import support

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "ollama" / "ollama"
GIB = 2**30


@pytest.fixture(scope="module")
def nvml_lib(tmp_path_factory):
    try:
        return support.load(tmp_path_factory.mktemp("nvml"))[0]
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"fake NVML unavailable: {e}")


class Box:
    """One machine's worth of doubles in a temporary directory."""

    def __init__(self, tmp: Path, monkeypatch):
        self.tmp = tmp
        self.dev = support.fake_dev(tmp / "dev", count=1)
        (self.dev / "nvidia-uvm").touch()
        self.state = tmp / "nvml.json"
        self.procs = tmp / "gpu-processes"
        (tmp / "fake-ollama").mkdir()
        self.faults = tmp / "fake-ollama" / "faults.json"
        self.faults.write_text("{}")
        self.nvml(memory_total=12 * GIB, memory_used=GIB // 2, compute_pids=[], processes_file=str(self.procs))
        for k, v in {"FAKE_NVML_STATE": self.state, "FAKE_NVML_DEV": self.dev}.items():
            monkeypatch.setenv(k, str(v))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None
        self.log = tmp / "ollama.log"

    def nvml(self, **kw):
        base = json.loads(self.state.read_text()) if self.state.exists() else {}
        support.write_state(self.state, **{**base, **kw})

    def start(self):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.tmp), "OLLAMA_HOST": f"127.0.0.1:{self.port}",
               "OLLAMA_MODELS": str(self.tmp / "models"), "FAKE_OLLAMA_FAULTS": str(self.faults),
               "FAKE_NVML_STATE": str(self.state), "FAKE_NVML_DEV": str(self.dev)}
        self.proc = subprocess.Popen([sys.executable, str(FAKE), "serve"], env=env, stdout=open(self.log, "a"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).read()
                return self
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def call(self, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
                return r.status, [json.loads(x) for x in text.splitlines() if x.strip()]
        except urllib.error.HTTPError as e:
            return e.code, [json.loads(e.read().decode())]

    def ps(self):
        return {m["name"]: (m["size"], m["size_vram"]) for m in self.call("/api/ps")[1][0]["models"]}

    def preload(self, name):
        status, _ = self.call("/api/generate", {"model": name, "keep_alive": -1, "stream": False})
        assert status == 200


@pytest.fixture
def box(nvml_lib, tmp_path, monkeypatch):
    b = Box(tmp_path, monkeypatch).start()
    for name in ("tinyllama", "llama3.1:70b"):
        assert b.call("/api/pull", {"model": name, "stream": False})[0] == 200
    yield b
    b.stop()


def gpu_obs(box):
    from localaid.adapters.gpu import Gpu
    g = Gpu(events=False)
    try:
        o = g.observe()
    finally:
        g.close()
    return replace(o, ollama_pids=(box.proc.pid,))


def decide(box, gpu, h=MappingProxyType({}), now=1000.0):
    models = tuple(LoadedModel(n, size, vram) for n, (size, vram) in box.ps().items())
    unit = UnitState("ollama.service", "loaded", "active", "running", main_pid=box.proc.pid, active_enter_mono=0.0)
    so = ServiceObs("ollama", unit, None, Probe(True), models=models)
    o = Observation(now=now, services=MappingProxyType({"ollama": so}), gpu=gpu)
    return policy_gpu.decide_gpu(Config(), o, h, now)


def test_memory_moves_with_what_ollama_loads(box):
    assert box.ps() == {}
    assert gpu_obs(box).devices[0].memory_used == GIB // 2
    box.preload("tinyllama")
    (size, vram), = box.ps().values()
    assert vram == size > 0
    d = gpu_obs(box).devices[0]
    assert d.memory_used == GIB // 2 + size and d.compute_pids == (box.proc.pid,)
    assert decide(box, gpu_obs(box))[0] == ()
    box.call("/api/generate", {"model": "tinyllama", "keep_alive": 0})  # unload: freed
    assert gpu_obs(box).devices[0].memory_used == GIB // 2 and box.ps() == {}


def test_a_model_too_big_for_the_card_is_offloaded_in_part_and_never_called_a_fallback(box):
    box.preload("llama3.1:70b")
    size, vram = box.ps()["llama3.1:70b"]
    assert 0 < vram < size and size > 12 * GIB
    d = gpu_obs(box).devices[0]
    assert 12 * GIB - 2 * GIB < d.memory_used <= 12 * GIB  # what was free, less Ollama's reserve and a layer
    h = MappingProxyType({})
    for now in (1000.0, 2000.0, 5000.0):  # long after any grace
        actions, h, frag, notes = decide(box, gpu_obs(box), h, now)
        assert actions == () and "CPU" not in frag, (actions, frag)


def test_gpu_lost_after_start_fails_the_next_request_then_loads_on_the_cpu(box):
    box.preload("tinyllama")
    box.faults.write_text(json.dumps({"cuda_error": "an illegal memory access was encountered"}))
    deadline = time.monotonic() + 5
    while "CUDA error: an illegal memory access" not in box.log.read_text():
        assert time.monotonic() < deadline, box.log.read_text()
        time.sleep(0.05)
    (size, vram), = box.ps().values()
    assert vram == size  # Ollama does not know yet: its list is stale
    gpu = gpu_obs(box)
    assert gpu.devices[0].compute_pids == () and gpu.devices[0].memory_used == GIB // 2  # the runner's memory is freed
    status, body = box.call("/api/chat", {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 500 and "CUDA error: an illegal memory access was encountered" in body[0]["error"]
    assert box.ps() == {}
    box.preload("tinyllama")
    (size, vram), = box.ps().values()
    assert vram == 0  # until a restart
    actions, *_ = decide(box, gpu_obs(box))
    assert [a.cause for a in actions] == ["cpu-fallback"]  # the card has room: a restart helps


def test_discovery_only_at_start_and_a_failed_one_is_counted_down(box):
    box.stop()
    (box.faults.parent / "discovery-fail").write_text("1\n")
    box.start()
    box.preload("tinyllama")
    assert list(box.ps().values())[0][1] == 0 and "cuda driver library init failure: 999" in box.log.read_text()
    assert (box.faults.parent / "discovery-fail").read_text().strip() == "0"
    box.call("/api/generate", {"model": "tinyllama", "keep_alive": 0})
    box.preload("tinyllama")  # the GPU works now, but this process looked only at its start
    assert list(box.ps().values())[0][1] == 0
    box.stop()
    box.start()
    box.preload("tinyllama")
    (size, vram), = box.ps().values()
    assert vram == size


def test_chat_and_embed_answer_as_ollama(box):
    status, lines = box.call("/api/chat", {"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    assert all(x["message"]["role"] == "assistant" for x in lines)
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] > 0
    status, (one,) = box.call("/api/chat", {"model": "tinyllama", "stream": False,
                                            "messages": [{"role": "user", "content": "hi"}]})
    assert one["done"] and one["message"]["content"]
    status, (load,) = box.call("/api/chat", {"model": "tinyllama", "messages": []})
    assert load["done_reason"] == "load"
    status, (emb,) = box.call("/api/embed", {"model": "tinyllama", "input": ["a", "b"]})
    assert status == 200 and len(emb["embeddings"]) == 2 and len(emb["embeddings"][0]) > 1
    assert box.call("/api/embed", {"model": "tinyllama", "input": "a"})[1][0]["embeddings"][0] == emb["embeddings"][0]
    assert box.call("/api/embed", {"model": "nope", "input": "a"})[0] == 404
