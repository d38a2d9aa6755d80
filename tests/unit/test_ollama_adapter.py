"""OllamaClient against the fake Ollama server (tests/fakes/ollama/ollama) run in-process."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from localaid.cli import models as models_cli, pull as pull_cli
from localaid.adapters.ollama import (
    InstalledModel, OllamaClient, OllamaError, PullError, PullProgress, RunningModel, parse_pull_line, same_model,
)

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "ollama" / "ollama"


def load_fake():
    loader = importlib.machinery.SourceFileLoader("fake_ollama", str(FAKE))
    spec = importlib.util.spec_from_loader("fake_ollama", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@pytest.fixture
def fake(tmp_path):
    mod = load_fake()
    mod.FAULTS = str(tmp_path / "faults.json")
    server = mod.make_server("127.0.0.1", 0, str(tmp_path / "models"), gpu=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    class Fake:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        models = tmp_path / "models"

        @staticmethod
        def faults(**kw):
            (tmp_path / "faults.json").write_text(json.dumps(kw))

    yield Fake
    (tmp_path / "faults.json").write_text("{}")  # release hung handlers
    server.shutdown()
    server.server_close()
    server.state.close()


# ------------------------------------------------------------------------------- NDJSON parsing
def test_pull_line_progress():
    p = parse_pull_line(b'{"status":"pulling 6a0746a1ec1a","digest":"sha256:6a07","total":4661211424,'
                        b'"completed":1048576}\n')
    assert p == PullProgress("pulling 6a0746a1ec1a", "sha256:6a07", 4661211424, 1048576)
    assert parse_pull_line('{"status":"pulling manifest"}') == PullProgress("pulling manifest")
    assert parse_pull_line("  \n") is None


def test_pull_line_error_after_200_raises():
    with pytest.raises(PullError, match="file does not exist"):
        parse_pull_line('{"error":"pull model manifest: file does not exist"}')


@pytest.mark.parametrize("line", ["<html>", "[1, 2]", '"text"'])
def test_pull_line_garbage_raises(line):
    with pytest.raises(PullError, match="unexpected line"):
        parse_pull_line(line)


def test_stream_without_success_is_an_error():
    lines = ['{"status":"pulling manifest"}', '{"status":"pulling x","digest":"d","total":10,"completed":5}']
    with pytest.raises(PullError, match="without reporting success"):
        OllamaClient._consume("m", lines, None)


def test_same_model():
    assert same_model("llama3", "llama3:latest")
    assert same_model("library/x:1b", "library/x:1b")
    assert not same_model("llama3:8b", "llama3:latest")
    assert same_model("host:5000/ns/m", "host:5000/ns/m:latest")


# ---------------------------------------------------------------------------- against the fake
def test_pull_tags_preload_ps_show(fake):
    with OllamaClient(fake.url) as c:
        assert c.alive().ok
        assert c.version() == "0.0.0"
        assert c.tags() == ()
        seen = []
        c.pull("tinyllama", seen.append)
        assert seen[0].status == "pulling manifest" and seen[-1].status == "success"
        sizes = [p.completed for p in seen if p.total]
        assert sizes == sorted(sizes) and sizes[-1] == seen[1].total
        (m,) = c.tags()
        assert isinstance(m, InstalledModel) and m.name == "tinyllama:latest" and m.size == seen[1].total
        assert (fake.models / "manifests/registry.ollama.ai/library/tinyllama/latest").is_file()
        assert c.show("tinyllama")["details"]["format"] == "gguf"
        assert c.show("nothere") is None
        assert c.ps() == ()
        c.preload("tinyllama", keep_alive=-1)
        (lm,) = c.ps()
        assert lm.on_gpu and lm.size == m.size
        (rm,) = c.running()
        assert isinstance(rm, RunningModel) and rm.expires_at.startswith("2318")
        fake.faults(cpu=True)
        assert c.ps()[0].size_vram == 0
        c.unload("tinyllama")
        assert c.ps() == ()


def test_late_pull_error_is_raised_with_its_text(fake):
    fake.faults(pull_error="max retries exceeded: connection reset by peer")
    progress = []
    with OllamaClient(fake.url) as c, pytest.raises(PullError, match="connection reset by peer"):
        c.pull("llama3.2:1b", progress.append)
    assert any(p.completed for p in progress)  # it failed after HTTP 200 and some progress
    with OllamaClient(fake.url) as c, pytest.raises(PullError, match="file does not exist"):
        c.pull("no-such-model")


def test_preload_unknown_model_names_it(fake):
    with OllamaClient(fake.url) as c, pytest.raises(OllamaError, match=r'HTTP 404 .*model "ghost:latest"'):
        c.preload("ghost:latest")


def test_http500_and_403_explained(fake):
    with OllamaClient(fake.url) as c:
        fake.faults(http500=True)
        with pytest.raises(OllamaError, match="HTTP 500"):
            c.version()
        assert c.alive().error == "HTTP 500"
    fake.faults()
    r = httpx.get(fake.url + "/", headers={"Host": "attacker.example"})
    assert r.status_code == 403  # the DNS-rebinding guard of a loopback-bound server
    assert httpx.get(fake.url + "/", headers={"Host": "localhost:11434"}).status_code == 200


def test_hung_server_is_bounded(fake):
    fake.faults(hang=True)
    with OllamaClient(fake.url, timeout=0.5) as c:
        t0 = time.monotonic()
        probe = c.alive()
        assert not probe.ok and "did not answer within 0.5 s" in probe.error
        with pytest.raises(OllamaError, match="did not answer"):
            c.ps()
        assert time.monotonic() - t0 < 3


def test_refused_connection():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with OllamaClient(f"http://127.0.0.1:{port}", timeout=1) as c:
        probe = c.alive()
        assert not probe.ok and "connection refused" in probe.error
        with pytest.raises(OllamaError, match="cannot reach Ollama"):
            c.tags()


def test_ps_from_threads_while_a_slow_load_runs(fake):
    with OllamaClient(fake.url, timeout=2, load_timeout=10) as c:
        c.pull("smollm:135m")
        fake.faults(slow_load=1.5)
        loader = threading.Thread(target=c.preload, args=("smollm:135m", -1))
        loader.start()
        results, errors = [], []

        def poll():
            try:
                for _ in range(5):
                    results.append(c.ps())
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        t0 = time.monotonic()
        threads = [threading.Thread(target=poll) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 40
        assert time.monotonic() - t0 < 1.5  # not serialised behind the load
        loader.join()
        assert [m.name for m in c.ps()] == ["smollm:135m"]


# ------------------------------------------------------------------------- localaid pull/models
def test_pull_display_plain_lines():
    out = io.StringIO()
    clock = iter(range(100)).__next__
    d = pull_cli.PullDisplay("m:1b", out=out, tty=False, clock=lambda: float(clock()))
    d.update(PullProgress("pulling manifest"))
    for done in (0, 250_000_000, 500_000_000, 1_000_000_000):
        d.update(PullProgress("pulling abc", "sha256:abc", 1_000_000_000, done))
    d.update(PullProgress("success"))
    d.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "m:1b: pulling manifest"
    assert lines[1].startswith("m:1b: 0% 0 B/1.0 GB")
    assert "m:1b: 25% 250.0 MB/1.0 GB" in lines[2] and "MB/s" in lines[2] and "ETA" in lines[2]
    assert lines[-2] == "m:1b: success"
    assert lines[-1].startswith("pulled m:1b (1.0 GB) in")


def test_pull_display_bar_on_tty():
    out = io.StringIO()
    d = pull_cli.PullDisplay("m", out=out, tty=True)
    d.update(PullProgress("pulling abc", "sha256:abc", 100, 50))
    assert "\r" in out.getvalue() and "50% [" in out.getvalue()


def test_model_rows_where():
    installed = (InstalledModel("a:latest", 100), InstalledModel("b:1b", 200), InstalledModel("c:2b", 300))
    running = (RunningModel("a:latest", 120, 120), RunningModel("b:1b", 220, 0), RunningModel("c:2b", 400, 100))
    table = models_cli.rows(installed, running)
    assert [(r.name, r.where) for r in table] == [("a:latest", "GPU"), ("b:1b", "CPU"), ("c:2b", "25% GPU")]
    text = models_cli.render(models_cli.rows(installed[:1] + (InstalledModel("z:1b", 5),), running[:1]))
    assert text.splitlines()[0].split() == ["NAME", "SIZE", "PARAMS", "QUANT", "LOADED", "VRAM", "WHERE", "UNTIL"]
    assert text.splitlines()[2].split()[-2:] == ["-", "-"]
