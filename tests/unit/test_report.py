"""State document and Prometheus metrics built from a real decide() result."""

import json
import urllib.request
from dataclasses import replace
from types import MappingProxyType

from localaid import policy, report
from localaid.config import Config
from localaid.records import GpuDevice, GpuObs, History, LoadedModel, Observation, Probe, ServiceObs, UnitState


def _obs():
    ollama = ServiceObs("ollama", UnitState("ollama.service", "loaded", "active", "running", main_pid=42),
                        probe=Probe(True, 0.0042, 200), models=(LoadedModel("llama3:latest", 5, 5),))
    webui = ServiceObs("open-webui", UnitState("open-webui.service", "loaded", "active", "running"),
                       probe=Probe(False, 1.0, None, "timeout after 1 s"))
    gpu = GpuObs(state="ok", devices=(GpuDevice(0, "NVIDIA GeForce RTX 4070", "GPU-1", 12 * 2**30, 2 * 2**30,
                                                55, 7),))
    return Observation(now=1000.0, services=MappingProxyType({"ollama": ollama, "open-webui": webui}), gpu=gpu)


def test_state_document_is_json_and_complete():
    cfg = Config()
    obs = _obs()
    d = policy.decide(cfg, obs, History())
    doc = report.state_document(cfg, obs, d, [], 3, 0.0123)
    again = json.loads(json.dumps(doc))
    assert again["status_line"] == d.status_line
    assert again["generation"] == 3
    names = [s["name"] for s in again["services"]]
    assert names == ["ollama", "open-webui"]
    assert again["services"][0]["probe_latency"] == 0.0042
    assert again["services"][0]["models"][0]["name"] == "llama3:latest"
    assert again["gpu"]["devices"][0]["memory_total"] == 12 * 2**30


def test_metrics_text_format():
    cfg = Config()
    obs = _obs()
    d = policy.decide(cfg, obs, History())
    text = report.metrics_text(obs, d, {("ollama", "kill-restart", "hung"): 2}, 0.01)
    lines = text.splitlines()
    assert 'localaid_up{service="ollama"} 1' in lines
    assert 'localaid_up{service="open-webui"} 0' in lines
    assert 'localaid_restarts_total{service="ollama",kind="kill-restart",cause="hung"} 2' in lines
    assert 'localaid_probe_latency_seconds{service="ollama"} 0.0042' in lines
    assert any(ln.startswith('localaid_gpu_memory_total_bytes{gpu="0",uuid="GPU-1"') for ln in lines)
    for ln in lines:  # every sample line is "name{labels} value" or "name value"
        if not ln.startswith("#"):
            float(ln.rsplit(" ", 1)[1])


def test_restarts_total_counts_only_restarts_of_the_supervised_services(monkeypatch):
    """An alert on localaid_restarts_total must not fire on every install: set-up jobs and model
    preloads have metrics of their own."""
    import io

    from localaid import log
    from localaid.act import Actor
    from localaid.records import Action
    monkeypatch.setattr(log, "stream", io.StringIO())

    class Sd:
        def __getattr__(self, name):
            return lambda *a: ("dead",) if name == "summaries" else None

    actor = Actor(Sd())
    actor.run([Action("start-job", "ollama-setup", "provision"), Action("start-job", "webui-setup", "provision"),
               Action("start-job", "gpu-recover", "xid", service="ollama"),
               Action("restart", "ollama.service", "boot-race", service="ollama"),
               Action("start", "open-webui.service", "failed", service="open-webui")], None)
    actor._record(Action("preload", "llama3", "warm", service="ollama"), "ok")
    cfg = Config()
    obs = _obs()
    lines = report.metrics_text(obs, policy.decide(cfg, obs, History()), actor.counts, 0.01).splitlines()
    restarts = sorted(ln for ln in lines if ln.startswith("localaid_restarts_total{"))
    assert restarts == ['localaid_restarts_total{service="ollama",kind="restart",cause="boot-race"} 1',
                        'localaid_restarts_total{service="open-webui",kind="start",cause="failed"} 1']
    assert sorted(ln for ln in lines if ln.startswith("localaid_job_starts_total{")) == [
        'localaid_job_starts_total{job="gpu-recover",cause="xid"} 1',
        'localaid_job_starts_total{job="ollama-setup",cause="provision"} 1',
        'localaid_job_starts_total{job="webui-setup",cause="provision"} 1']
    assert 'localaid_actions_total{kind="preload",target="llama3",cause="warm"} 1' in lines
    assert "# TYPE localaid_job_starts_total counter" in lines


def test_metrics_textfile_only_into_existing_directory(tmp_path):
    report.write_metrics(str(tmp_path / "missing" / "x.prom"), "a 1\n")
    assert not (tmp_path / "missing").exists()
    report.write_metrics(str(tmp_path / "x.prom"), "a 1\n")
    assert (tmp_path / "x.prom").read_text() == "a 1\n"


def test_metrics_server_serves_last_text_on_loopback():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = report.MetricsServer(f"127.0.0.1:{port}")
    try:
        srv.text = "localaid_healthy 1\n"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        assert body == "localaid_healthy 1\n"
    finally:
        srv.close()


# ------------------------------------------------------------------ GPU: Xids, reboot required, processes
def _gpu_obs():
    from localaid.records import GpuProcess, XidEvent
    dev = GpuDevice(0, "NVIDIA GeForce RTX 4070", "GPU-1234", 12 * 2**30, 2 * 2**30, 55, 7, compute_pids=(42, 43),
                    processes=(GpuProcess(42, 3 * 2**30), GpuProcess(43)))
    gpu = GpuObs(state="ok", devices=(dev,), xids=(XidEvent(79, "GPU-1234", 5.0),),
                 xid_counts=((13, 2), (79, 1)), last_xids=(XidEvent(13, "GPU-1234", 1.0), XidEvent(79, "GPU-1234", 5.0)))
    return Observation(now=1000.0, services=_obs().services, gpu=gpu)


def test_metrics_xid_counter_and_reboot_required():
    cfg = Config()
    obs = _gpu_obs()
    d = policy.decide(cfg, obs, History())
    lines = report.metrics_text(obs, d, {}, 0.01).splitlines()
    assert "# TYPE localaid_gpu_xid_events_total counter" in lines
    assert 'localaid_gpu_xid_events_total{xid="13"} 2' in lines and 'localaid_gpu_xid_events_total{xid="79"} 1' in lines
    assert "localaid_gpu_reboot_required 0" in lines
    d = replace(d, history=replace(d.history, gpu=MappingProxyType({**d.history.gpu, "reboot_required": 990.0})))
    assert "localaid_gpu_reboot_required 1" in report.metrics_text(obs, d, {}, 0.01).splitlines()


def test_state_document_has_uuid_processes_and_xids():
    cfg = Config()
    obs = _gpu_obs()
    d = policy.decide(cfg, obs, History())
    gpu = json.loads(json.dumps(report.state_document(cfg, obs, d, [], 1, 0.01)))["gpu"]
    assert gpu["devices"][0]["uuid"] == "GPU-1234"
    assert gpu["devices"][0]["processes"] == [{"pid": 42, "used_memory": 3 * 2**30}, {"pid": 43, "used_memory": None}]
    assert gpu["xid_counts"] == {"13": 2, "79": 1} and gpu["reboot_required"] is False
    assert [x["xid"] for x in gpu["last_xids"]] == [13, 79] and "xids" not in gpu


def test_status_shows_uuid_processes_and_xid_watch():
    from localaid.cli import status
    cfg = Config()
    obs = _gpu_obs()
    obs = replace(obs, gpu=replace(obs.gpu, xid_watch="not supported by this GPU/driver"))
    doc = json.loads(json.dumps(report.state_document(cfg, obs, policy.decide(cfg, obs, History()), [], 1, 0.01)))
    text = status.render(doc, 1.0, "active")
    assert "GPU 0: NVIDIA GeForce RTX 4070  GPU-1234  2.0/12.0 GiB" in text
    assert "  compute processes: PID 42 3.0 GiB, PID 43" in text.splitlines()
    assert "xid watch: not supported by this GPU/driver" in text.splitlines()
    assert "Xid events since start: 13 ×2, 79 ×1" in text.splitlines()
    doc["gpu"]["devices"][0]["processes"] = None
    assert "  compute processes: not listed by the driver" in status.render(doc, 1.0, "active").splitlines()


def test_metrics_server_bounds_silent_clients_in_time_and_threads():
    import socket
    import threading
    import time
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = report.MetricsServer(f"127.0.0.1:{port}", timeout=0.5, max_clients=2)
    srv.text = "localaid_up 1\n"
    try:
        base = threading.active_count()
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        time.sleep(0.2)
        assert threading.active_count() <= base + 2  # 20 silent clients, at most 2 threads
        # the ones over the cap were closed at once
        closed = 0
        for c in silent:
            c.settimeout(0.2)
            try:
                closed += c.recv(1) == b""
            except OSError:
                pass
        assert closed >= 18
        time.sleep(0.6)  # the two served ones time out
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        assert body == b"localaid_up 1\n"
        for c in silent:
            c.close()
    finally:
        srv.close()
