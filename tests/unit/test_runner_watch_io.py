"""The wedged-runner watchdog's I/O: the runners read from /proc and the cgroup, the canary's
request, Ollama's expiry times; and the fake Ollama's runner children it is tested against
(one per loaded model, in both engine layouts, a wedge and a long answer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from localaid import act, procfs
from localaid.adapters import http
from tests.unit.test_ollama_adapter import load_fake


def test_ollamas_expiry_times_as_go_writes_them():
    assert http.parse_time("2026-12-06T11:00:00.123456789Z") == pytest.approx(1796554800.123456)
    assert http.parse_time("2026-12-06T12:00:00+01:00") == 1796554800.0
    assert http.parse_time("2318-01-01T00:00:00Z") > 1e10
    assert http.parse_time("soon") is None and http.parse_time(None) is None
    [m] = http.parse_ps({"models": [{"name": "a", "size": 2, "size_vram": 2, "expires_at": "2026-12-06T11:00:00Z"}]})
    assert m.expires_at == 1796554800.0


def test_the_canary_asks_one_token_and_leaves_the_unload_time_as_it_was():
    path, body = act.canary_request("qwen3:8b", "nomic-embed-text", 1000.0 + 240.4, 1000.0)
    assert path == "/api/generate"
    assert body == {"model": "qwen3:8b", "stream": False, "keep_alive": "240s", "prompt": "Say OK.",
                    "options": {"num_predict": 1}}
    assert act.canary_request("m", None, 2e10, 1000.0)[1]["keep_alive"] == -1  # kept forever stays so
    assert act.canary_request("m", None, 999.0, 1000.0)[1]["keep_alive"] == "1s"  # due: never 0 (unload)
    assert "keep_alive" not in act.canary_request("m", None, None, 1000.0)[1]
    path, body = act.canary_request("nomic-embed-text", "nomic-embed-text", None, 1000.0)
    assert path == "/api/embed" and body["input"] == "ok" and "prompt" not in body


def test_process_cpu_time_and_name_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\n"
                              "while time.process_time()-t<0.3: pass\ntime.sleep(30)"])
    try:
        time.sleep(1.0)
        assert 0.25 <= procfs.process_cpu_seconds(child.pid) <= 1.0
        assert procfs.process_name(child.pid).startswith("python")
    finally:
        child.kill()
        child.wait()
    assert procfs.process_cpu_seconds(child.pid) is None


def test_runners_are_the_cgroups_processes_but_the_server(tmp_path, monkeypatch):
    me = os.getpid()
    child = subprocess.Popen(["sleep", "30"])
    try:
        monkeypatch.setattr(procfs, "cgroup_pids", lambda cg: (me, child.pid, 999999999) if cg else ())
        r = procfs.runners("/system.slice/ollama.service", server_pid=me)
        assert r.pids == (child.pid,) and r.names == ("sleep",) and r.cpu_seconds >= 0
        assert procfs.runners("", me) is None
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------------- the fake's runners
@pytest.fixture(params=["0.9.1", "0.30.12"])
def fake(request, tmp_path):
    mod = load_fake()
    mod.FAULTS = str(tmp_path / "faults.json")
    mod.VERSION = request.param
    server = mod.make_server("127.0.0.1", 0, str(tmp_path / "models"), gpu=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(path, body, timeout=10):
        req = urllib.request.Request(url + path, json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()

    post("/api/pull", {"model": "qwen3:1.7b", "stream": False})
    yield server, post, (tmp_path / "faults.json"), request.param
    server.shutdown()
    server.server_close()
    server.state.close()


def _children(server):
    return [e["runner"] for e in server.state.loaded.values()]


def test_a_loaded_model_has_its_runner_child_named_as_the_release_names_it(fake):
    server, post, _, version = fake
    answer = json.loads(post("/api/generate", {"model": "qwen3:1.7b", "prompt": "hi", "stream": False}))
    assert answer["response"] == "fake answer" and answer["eval_count"] == 2
    [runner] = _children(server)
    assert procfs.process_name(runner.pid) == ("llama-server" if version == "0.30.12" else "ollama")
    post("/api/generate", {"model": "qwen3:1.7b", "keep_alive": 0})  # unloaded: the runner ends
    assert runner.wait(timeout=5) is not None and _children(server) == []


def test_a_long_answer_works_the_runners_cpu_and_streams_it(fake):
    server, post, faults, _ = fake
    faults.write_text(json.dumps({"gen_tokens": 20, "gen_rate": 20, "gen_cpu": 0.02}))
    started = time.monotonic()
    lines = post("/api/chat", {"model": "qwen3:1.7b", "messages": [{"role": "user", "content": "hi"}]})
    took = time.monotonic() - started
    chunks = [json.loads(x) for x in lines.splitlines()]
    assert len(chunks) == 21 and chunks[-1]["done"] and chunks[-1]["eval_count"] == 20
    assert 0.9 <= took <= 5
    [runner] = _children(server)
    assert procfs.process_cpu_seconds(runner.pid) >= 0.35  # 20 tokens x 20 ms of CPU
    one = json.loads(post("/api/generate", {"model": "qwen3:1.7b", "prompt": "x", "stream": False,
                                            "options": {"num_predict": 1}}))
    assert one["eval_count"] == 1  # the canary's one token, even when answers are long


def test_a_wedged_runner_answers_nothing_while_the_server_answers_everything_else(fake):
    server, post, faults, _ = fake
    post("/api/generate", {"model": "qwen3:1.7b", "prompt": "warm", "stream": False})
    faults.write_text(json.dumps({"runner_wedge": True}))
    with pytest.raises(OSError):  # TimeoutError: the request hangs
        post("/api/generate", {"model": "qwen3:1.7b", "prompt": "hi", "stream": False}, timeout=1.5)
    faults.write_text("{}")  # the wedge does not heal: later requests queue behind it
    with pytest.raises(OSError):
        post("/api/generate", {"model": "qwen3:1.7b", "prompt": "x", "options": {"num_predict": 1},
                               "stream": False}, timeout=1.5)
    [runner] = _children(server)
    cpu = procfs.process_cpu_seconds(runner.pid)
    time.sleep(1.0)
    assert procfs.process_cpu_seconds(runner.pid) - cpu < 0.01  # no work at all
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/api/version", timeout=2) as r:
        assert r.status == 200
