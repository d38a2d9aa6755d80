"""Report: the state file, Prometheus metrics, and the words shown by `systemctl status`."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from localaid import __version__, fsutil, paths
from localaid.act import RESTART_KINDS
from localaid.policy_disk import disk_level
from localaid.records import Decision, NodeHistory, NodeObs, Observation


DISK_LEVELS = {"ok": 0, "low": 1, "full": 2}


def state_document(config, obs: Observation, decision: Decision, recent: list[dict], generation: int,
                   cycle_seconds: float) -> dict:
    gpu = asdict(obs.gpu)
    gpu.pop("xids", None)  # this cycle's events: last_xids and xid_counts keep them
    gpu["xid_counts"] = {str(xid): n for xid, n in obs.gpu.xid_counts}
    gpu["reboot_required"] = _reboot_required(decision)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "written": time.time(),
        "generation": generation,
        "config_sources": list(config.sources),
        "status_line": decision.status_line,
        "healthy": decision.healthy,
        "cycle_seconds": round(cycle_seconds, 4),
        "services": [
            {**asdict(st),
             "restarts": list(decision.history.services[st.name].restarts),
             "probe_latency": _latency(obs, st.name),
             "unit": asdict(obs.services[st.name].unit) if obs.services.get(st.name) and
             obs.services[st.name].unit else None,
             "models": [asdict(m) for m in (obs.services[st.name].models or ())]
             if obs.services.get(st.name) else []}
            for st in decision.services
        ],
        "gpu": gpu,
        "jobs": {name: {"state": jh.state, "failures": jh.failures,
                        "text": obs.jobs[name].text if name in obs.jobs else None}
                 for name, jh in decision.history.jobs.items()},
        "nodes": [_node(n, decision.history.nodes.get(n.url, NodeHistory(state="unknown"))) for n in obs.nodes],
        "models": _models(config),
        "webui": _webui(config),
        "https": _https(config, obs.tls),
        "backup": _backup(config, obs),
        "disks": [{"what": d.what, "path": d.path, "free": d.free, "size": d.total,
                   "level": DISK_LEVELS[disk_level(config, d)]} for d in obs.disks],
        "recent_actions": recent,
    }


def _https(config, tls) -> dict | None:
    """The served certificate, and the CA to trust with its fingerprint (`localaid status`)."""
    if tls is None:
        return None
    return {"source": tls.source, "not_after": tls.not_after, "error": tls.error,
            "ca_fingerprint": tls.ca_fingerprint,
            "ca_url": f"{config.webui.public_url}/localaid-ca.crt" if tls.source == "local-ca" else None}


def _webui(config) -> dict | None:
    """Where people open Open WebUI and whom they sign in as (the password stays in its file)."""
    w = config.webui
    if not w.enabled:
        return None
    return {"url": w.public_url, "admin": w.admin.email,
            "password_file": w.admin.password_file}


def _backup(config, obs: Observation) -> dict | None:
    b = obs.backup
    if b is None:
        return None
    return {"dir": config.backup.dir, "schedule": config.backup.schedule, "last_good_at": b.good_at,
            "last_good_size": b.good_size, "last_at": b.last_at, "last_error": b.last_error}


def _models(config) -> dict:
    """ollama.models as configured: auto (with the pick once made) or the list."""
    o = config.ollama
    return {"auto": o.picks_model, "names": [m.name for m in o.models],
            "pick": asdict(o.chosen) if o.chosen is not None else None}


def _node(n: NodeObs, h: NodeHistory) -> dict:
    """One of a UI host's Ollama nodes, for `localaid status`."""
    return {"url": n.url, "state": h.state, "reason": h.reason, "in_use": n.in_use,
            "latency": round(n.probe.latency, 4) if n.probe else None}


def _reboot_required(decision: Decision) -> bool:
    return bool(decision.history.gpu.get("reboot_required"))


def _latency(obs: Observation, name: str) -> float | None:
    so = obs.services.get(name)
    return round(so.probe.latency, 4) if so and so.probe else None


def write_state(doc: dict) -> None:
    fsutil.write_json(paths.STATUS_FILE, doc, 0o644)


def metrics_text(obs: Observation, decision: Decision, counts: dict, cycle_seconds: float,
                 config=None) -> str:
    out = []

    def metric(name, kind, help_text, samples):
        out.append(f"# HELP localaid_{name} {help_text}")
        out.append(f"# TYPE localaid_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            out.append(f"localaid_{name}{{{lab}}} {value}" if lab else f"localaid_{name} {value}")

    metric("healthy", "gauge", "1 when every enabled service is ok.", [({}, int(decision.healthy))])
    metric("up", "gauge", "1 when the service answers its health probe.",
           [({"service": st.name}, int(st.state == "ok")) for st in decision.services])
    metric("probe_latency_seconds", "gauge", "Latency of the last health probe.",
           [({"service": n}, f"{so.probe.latency:.4f}") for n, so in obs.services.items() if so.probe])
    # Only restarts of the supervised services: an alert on them must not fire on every install,
    # whose set-up jobs are counted apart.
    metric("restarts_total", "counter", "Restarts (and starts of a failed service) localaid made, by service, "
           "kind and cause (since start).",
           [({"service": s, "kind": k, "cause": c}, n) for (s, k, c), n in sorted(counts.items())
            if k in RESTART_KINDS])
    metric("job_starts_total", "counter", "Set-up and recovery jobs (localaid-*.service) localaid started, by job "
           "and cause (since start).",
           [({"job": s, "cause": c}, n) for (s, k, c), n in sorted(counts.items()) if k == "start-job"])
    metric("actions_total", "counter", "Other actions localaid took (model preloads ...), by kind, target and cause "
           "(since start).",
           [({"kind": k, "target": s, "cause": c}, n) for (s, k, c), n in sorted(counts.items())
            if k not in RESTART_KINDS and k != "start-job"])
    metric("cycle_seconds", "gauge", "Duration of the last supervision cycle.", [({}, f"{cycle_seconds:.4f}")])
    if obs.nodes:  # a UI host's Ollama nodes (webui.ollama_urls)
        metric("node_up", "gauge", "1 when the Ollama node answers its probe.",
               [({"node": n.url}, int(bool(n.probe and n.probe.ok))) for n in obs.nodes])
        metric("node_in_use", "gauge", "1 when Open WebUI uses the node (its connection is enabled).",
               [({"node": n.url}, int(bool(n.in_use))) for n in obs.nodes if n.in_use is not None])
        metric("node_probe_latency_seconds", "gauge", "Latency of the node's last probe.",
               [({"node": n.url}, f"{n.probe.latency:.4f}") for n in obs.nodes if n.probe])
    metric("disk_free_bytes", "gauge", "Free space on the disk of Ollama's models (what=models) and of Open "
           "WebUI's data (what=webui).", [({"what": d.what, "path": d.path}, d.free) for d in obs.disks
                                          if d.free is not None])
    metric("disk_size_bytes", "gauge", "Size of that disk.", [({"what": d.what, "path": d.path}, d.total)
                                                              for d in obs.disks if d.total is not None])
    if config is not None:
        metric("disk_level", "gauge", "0 ok, 1 below disk.warn_free, 2 below disk.critical_free.",
               [({"what": d.what, "path": d.path}, DISK_LEVELS[disk_level(config, d)]) for d in obs.disks
                if d.free is not None])
    if obs.tls is not None and obs.tls.not_after is not None:
        metric("https_certificate_expiry_timestamp_seconds", "gauge", "When the certificate localaid-https.service "
               "serves ends (webui.tls, ollama.expose; source: local-ca, own or node).",
               [({"source": obs.tls.source}, f"{obs.tls.not_after:.0f}")])
    if obs.backup is not None:
        _backup_metrics(metric, obs.backup, config.backup.interval if config is not None else 86400.0)
    gpu = obs.gpu
    metric("gpu_state", "gauge", "GPU watch state (1 for the current one).", [({"state": gpu.state}, 1)])
    metric("gpu_reboot_required", "gauge", "1 when GPU recovery gave up: only a reboot helps.",
           [({}, int(_reboot_required(decision)))])
    metric("gpu_xid_events_total", "counter", "NVIDIA Xid events seen since localaid started, by Xid.",
           [({"xid": xid}, n) for xid, n in gpu.xid_counts])
    for d in gpu.devices:
        lab = {"gpu": str(d.index), "uuid": d.uuid, "name": d.name}
        out.append(f'localaid_gpu_memory_total_bytes{{{_labels(lab)}}} {d.memory_total}')
        out.append(f'localaid_gpu_memory_used_bytes{{{_labels(lab)}}} {d.memory_used}')
        if d.temperature is not None:
            out.append(f'localaid_gpu_temperature_celsius{{{_labels(lab)}}} {d.temperature}')
        if d.utilization is not None:
            out.append(f'localaid_gpu_utilization_ratio{{{_labels(lab)}}} {d.utilization / 100:.2f}')
    return "\n".join(out) + "\n"


def _backup_metrics(metric, b, interval: float) -> None:
    """The last good backup's time and size, the schedule, and whether the last run failed: the
    alert rules compare them (localaid.rules.yml)."""
    if b.good_at is not None:
        metric("backup_last_success_timestamp_seconds", "gauge", "When the last good backup was taken.",
               [({}, f"{b.good_at:.0f}")])
        metric("backup_last_success_size_bytes", "gauge", "Size of the last good backup.",
               [({}, int(b.good_size or 0))])
    metric("backup_last_failed", "gauge", "1 when the last backup failed (no backup, or one with problems).",
           [({}, int(b.last_error is not None and (b.good_at or 0) < (b.last_at or 0)))])
    metric("backup_interval_seconds", "gauge", "The backup schedule (backup.schedule), in seconds.",
           [({}, f"{interval:.0f}")])
    metric("backup_enabled_timestamp_seconds", "gauge", "When backups were first scheduled on this host.",
           [({}, f"{b.since:.0f}")] if b.since is not None else [])


def _labels(d: dict) -> str:
    return ",".join(f'{k}="{_esc(v)}"' for k, v in d.items())


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(path: str | None, text: str) -> None:
    """Only into an existing directory (node-exporter's textfile collector creates it)."""
    if path and os.path.isdir(os.path.dirname(path)):
        fsutil.atomic_write(path, text, 0o644)


class MetricsServer:
    """A loopback /metrics endpoint (metrics.listen) serving the text of the last cycle.

    It only hands out a string the loop prepared: a slow scraper cannot slow the loop down, and
    a client that connects and says nothing (or trickles) cannot pile up threads: each connection
    gets `timeout` seconds, and at most `max_clients` are served at once (more are closed at once;
    Prometheus scrapes again at its next interval).
    """

    def __init__(self, listen: str, timeout: float = 5.0, max_clients: int = 4):
        import socket
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from localaid.config import parse_listen
        host, port = parse_listen(listen)
        server = self
        slots = threading.BoundedSemaphore(max_clients)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = server.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # the journal gets actions, not scrapes
                pass

        Handler.timeout = timeout  # socket timeout for every read and write of a request

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

            def process_request(self, request, client_address):
                if not slots.acquire(blocking=False):
                    self.shutdown_request(request)  # at the cap: no thread for this one
                    return
                super().process_request(request, client_address)

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        self.text = ""
        self.httpd = Server((host, port), Handler)
        threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
