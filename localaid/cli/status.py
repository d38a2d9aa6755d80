"""`localaid status [--json]`: the daemon's last view (/run/localaid/status.json), rendered."""

from __future__ import annotations

import json
import time

from localaid import paths
from localaid.cli.common import EX_FAIL, EX_NOT_RUNNING, EX_OK

STALE_AFTER = 30.0  # seconds: an older state is shown "as last seen" and counts as not running


def main(args) -> int:
    from localaid import fsutil
    doc = fsutil.read_json(paths.STATUS_FILE)
    age = time.time() - float(doc.get("written", 0)) if isinstance(doc, dict) else None
    running = daemon_state()
    if args.json:
        print(json.dumps({"daemon": running, "age_seconds": age, "state": doc}, indent=1, default=str))
    else:
        print(render(doc, age, running))
    if running != "active" or doc is None or (age is not None and age > STALE_AFTER):
        return EX_NOT_RUNNING
    return EX_OK if doc.get("healthy") else EX_FAIL


def daemon_state() -> str:
    try:
        from localaid.adapters.systemd import Systemd
        return Systemd(timeout=3).state("localaid.service").active_state or "unknown"
    except Exception as e:  # no systemd here: say so rather than fail
        return f"unknown ({e})"


def render(doc, age: float | None, daemon: str) -> str:
    """The status document as `localaid status` prints it."""
    lines = []
    if daemon != "active":
        lines.append(f"localaid daemon is {daemon}: start it with `systemctl start localaid`"
                     " (journalctl -u localaid tells why it stopped)")
    if not isinstance(doc, dict):
        lines.append(f"no state yet ({paths.STATUS_FILE} missing): the daemon has not completed a cycle")
        return "\n".join(lines)
    if age is not None and age > STALE_AFTER:
        lines.append(f"state is {age:.0f} s old: shown as last seen")
    lines.append(f"● {doc.get('status_line', '')}")
    lines.append("")
    lines.append(f"{'SERVICE':<12} {'STATE':<12} {'PROBE':>8} {'RESTARTS':>9}  DETAIL")
    for s in doc.get("services", []):
        lat = s.get("probe_latency")
        lat_s = f"{lat * 1000:.0f} ms" if isinstance(lat, (int, float)) else "-"
        reason = s.get("reason") or s.get("detail") or ""
        lines.append(f"{s['name']:<12} {s['state']:<12} {lat_s:>8} {s.get('restarts_in_window', 0):>9}  {reason}")
    if doc.get("nodes"):  # a UI host's Ollama nodes, with what each says now
        lines.append("")
        lines.append(f"{'NODE':<32} {'STATE':<8} {'PROBE':>8} {'IN USE':>7}  VERSION, MODELS (LOADED)")
        for n in doc["nodes"]:
            lat = n.get("latency")
            lat_s = f"{lat * 1000:.0f} ms" if isinstance(lat, (int, float)) else "-"
            use = {True: "yes", False: "no", None: "?"}[n.get("in_use")]
            lines.append(f"{n['url']:<32} {n['state']:<8} {lat_s:>8} {use:>7}  "
                         f"{n.get('reason') or node_detail(n['url'])}")
    lines.append("")
    lines.extend(_gpu_lines(doc.get("gpu") or {}))
    lines.extend(_choice_lines(doc.get("models") or {}))
    w = doc.get("webui")
    if w:
        lines.append(f"Open WebUI: {w['url']}, sign in as {w['admin']} (password: sudo cat {w['password_file']})")
    lines.extend(_https_lines(doc.get("https")))
    lines.extend(_backup_lines(doc.get("backup")))
    lines.extend(_disk_lines(doc.get("disks") or []))
    models = [m for s in doc.get("services", []) for m in s.get("models", [])]
    for m in models:
        where = "GPU" if m["size_vram"] >= m["size"] > 0 else ("CPU" if m["size_vram"] == 0 else "partly CPU")
        lines.append(f"model {m['name']}: {m['size'] / 1e9:.1f} GB on {where}")
    for name, j in (doc.get("jobs") or {}).items():
        if j.get("state") in ("failed", "started", "blocked"):
            lines.append(f"job {name}: {j['state']}" + (f" — {j['text']}" if j.get("text") else ""))
    recent = doc.get("recent_actions") or []
    if recent:
        lines.append("")
        lines.append("last actions:")
        for a in recent[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(a["at"]))
            lines.append(f"  {when} {a['kind']} {a['target']} ({a['cause']}): {a['outcome']}")
    return "\n".join(lines)


def node_detail(url: str, timeout: float = 1.0) -> str:
    """ "Ollama 0.9.1, 3 models (llama3:latest)" asked of the node now; its error otherwise."""
    from localaid.adapters.ollama import OllamaClient, OllamaError
    try:
        with OllamaClient(url, timeout=timeout) as c:
            version, models, loaded = c.version(), c.tags(), c.running()
    except OllamaError as e:
        return str(e)
    return f"Ollama {version}, {len(models)} models" + (f" ({', '.join(m.name for m in loaded)})" if loaded else "")


def _https_lines(h: dict | None) -> list[str]:
    """ "HTTPS: certificate of the local CA, valid until 2027-03-06; trust the CA: …"."""
    if not h:
        return []
    if h.get("not_after") is None:
        return [f"HTTPS: {h.get('error') or 'no certificate yet'}"]
    until = time.strftime("%Y-%m-%d", time.gmtime(h["not_after"]))
    who = {"local-ca": "of the local CA", "own": "your own (webui.tls.cert_file)",
           "node": "of this node, from the UI host's CA"}.get(h.get("source"), "")
    line = f"HTTPS: certificate {who}, valid until {until}"
    if h.get("ca_fingerprint") and h.get("source") == "local-ca":
        line += (f"; browsers trust the CA: sudo localaid https ca > localaid-ca.crt, or "
                 f"{h.get('ca_url')} (SHA-256 {h['ca_fingerprint']})")
    return [line]


def _disk_lines(disks: list[dict]) -> list[str]:
    """ "disk /var/lib/open-webui: 80.1 GB free of 270.6 GB (Open WebUI's data)", one per path."""
    names = {"models": "Ollama's models", "webui": "Open WebUI's data"}
    marks = {1: " — LOW", 2: " — FULL"}
    return [f"disk {d['path']}: {d['free'] / 1e9:.1f} GB free of {d['size'] / 1e9:.1f} GB "
            f"({names.get(d['what'], d['what'])}){marks.get(d.get('level'), '')}"
            for d in disks if d.get("free") is not None and d.get("size")]


def _backup_lines(b: dict | None) -> list[str]:
    """The last good backup and, when it failed since, the last run (localaid backup, the timer)."""
    if not b:
        return []
    if b.get("last_good_at"):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b["last_good_at"]))
        size = f", {b['last_good_size'] / 1e6:.1f} MB" if b.get("last_good_size") else ""
        line = f"backups: last good {when}{size} in {b['dir']} (schedule {b['schedule']}; localaid restore lists them)"
    else:
        line = f"backups: none yet in {b['dir']} (schedule {b['schedule']}; localaid backup takes one now)"
    if b.get("last_error") and (b.get("last_at") or 0) > (b.get("last_good_at") or 0):
        line += f"\n  the last one FAILED: {b['last_error']}"
    return [line]


def _choice_lines(models: dict) -> list[str]:
    """ollama.models: auto: the model picked for this machine and why, or that it is not yet."""
    if not models.get("auto"):
        return []
    pick = models.get("pick")
    if not pick:
        return ["chat model (ollama.models: auto): not picked yet, see the status line"]
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(pick.get("made") or 0))
    return [f"chat model (ollama.models: auto): {pick['model']}, picked {made} for {pick.get('basis')}",
            f"  why: {pick.get('reason')}  (other sizes: localaid models --suggest)"]


def _gpu_lines(gpu: dict) -> list[str]:
    lines = []
    if gpu.get("devices"):
        for d in gpu["devices"]:
            lines.append(f"GPU {d['index']}: {d['name']}  {d.get('uuid') or 'no UUID'}  {d['memory_used'] / 2**30:.1f}/"
                         f"{d['memory_total'] / 2**30:.1f} GiB" +
                         (f"  {d['temperature']}°C" if d.get("temperature") is not None else "") +
                         (f"  {d['utilization']}% busy" if d.get("utilization") is not None else ""))
            lines.append(f"  compute processes: {_processes_text(d.get('processes', ()))}")
    else:
        lines.append(f"GPU: {gpu.get('state', 'unknown')}" + (f" ({gpu['error']})" if gpu.get("error") else ""))
    if gpu.get("xid_watch"):
        lines.append(f"xid watch: {gpu['xid_watch']}")
    if gpu.get("xid_counts"):
        lines.append("Xid events since start: " + ", ".join(f"{x} ×{n}" for x, n in gpu["xid_counts"].items()))
    return lines


def _processes_text(procs) -> str:
    if procs is None:
        return "not listed by the driver"
    if not procs:
        return "none"
    return ", ".join(f"PID {p['pid']}" + (f" {p['used_memory'] / 2**30:.1f} GiB" if p.get("used_memory") is not None
                                          else "") for p in procs)
