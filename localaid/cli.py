"""Command line: argument parsing only. Every command is a function `fn(args) -> exit code`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from localaid import __version__, paths

EX_OK, EX_FAIL, EX_USAGE, EX_NOT_RUNNING, EX_CONFIG = 0, 1, 2, 3, 78

DESCRIPTION = """\
localaid keeps a private "local OpenAI" healthy on a Debian machine with an NVIDIA GPU:
Ollama (installed through its official install script) serving models on the GPU, Open WebUI
(installed with pip/uv into its own venv) in front of it, and a supervisor that restarts what
hangs or dies, heals lost GPUs and CPU fallbacks, and is itself guarded by systemd's watchdog.
"""

EPILOG = """\
files:
  /etc/localaid/localaid.yaml     configuration (every key optional; commented defaults inside)
  /etc/localaid/conf.d/*.yaml     drop-in configuration, merged in name order
  /run/localaid/status.json       state written by the daemon every cycle
  /var/lib/localaid/              localaid's own state (Open WebUI venvs, backups)

exit status:
  0 success/healthy, 1 failure or unhealthy, 2 usage error, 3 daemon not running,
  78 configuration invalid

examples:
  systemctl status localaid           one-line health in the STATUS line
  localaid status                     services, GPU, models and last actions
  localaid config check               validate /etc/localaid before `systemctl reload localaid`
  localaid pull deepseek-r1:8b        download a model with a progress bar
"""


def _config(args):
    """Load the configuration for a command; print file:line: key: reason on error."""
    from localaid import config as config_mod
    try:
        return config_mod.load(args.config, args.conf_d)
    except config_mod.ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(EX_CONFIG)


# ------------------------------------------------------------------------------------ commands
def cmd_daemon(args) -> int:
    from localaid import supervisor
    return supervisor.main(args.config, args.conf_d)


def cmd_config_check(args) -> int:
    from localaid import config as config_mod
    path = args.file or args.config
    conf_d = None if args.file else args.conf_d
    try:
        cfg = config_mod.load(path, conf_d)
    except config_mod.ConfigError as e:
        print(str(e), file=sys.stderr)
        n = len(e.errors)
        print(f"{n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return EX_CONFIG if args.file is None else EX_FAIL
    if not args.quiet:
        print("configuration valid: " + (", ".join(cfg.sources) or f"{path} absent, all defaults"))
    return EX_OK


def cmd_status(args) -> int:
    from localaid import fsutil
    doc = fsutil.read_json(paths.STATUS_FILE)
    age = time.time() - float(doc.get("written", 0)) if isinstance(doc, dict) else None
    running = _daemon_state()
    if args.json:
        print(json.dumps({"daemon": running, "age_seconds": age, "state": doc}, indent=1, default=str))
    else:
        print(_render_status(doc, age, running))
    if running != "active" or doc is None or (age is not None and age > 30):
        return EX_NOT_RUNNING
    return EX_OK if doc.get("healthy") else EX_FAIL


def _daemon_state() -> str:
    try:
        from localaid.adapters.systemd import Systemd
        return Systemd(timeout=3).state("localaid.service").active_state or "unknown"
    except Exception as e:  # no systemd here: say so rather than fail
        return f"unknown ({e})"


def _render_status(doc, age, daemon: str) -> str:
    lines = []
    if daemon != "active":
        lines.append(f"localaid daemon is {daemon}: start it with `systemctl start localaid`"
                     " (journalctl -u localaid tells why it stopped)")
    if not isinstance(doc, dict):
        lines.append(f"no state yet ({paths.STATUS_FILE} missing): the daemon has not completed a cycle")
        return "\n".join(lines)
    if age is not None and age > 30:
        lines.append(f"state is {age:.0f} s old: shown as last seen")
    lines.append(f"● {doc.get('status_line', '')}")
    lines.append("")
    lines.append(f"{'SERVICE':<12} {'STATE':<12} {'PROBE':>8} {'RESTARTS':>9}  DETAIL")
    for s in doc.get("services", []):
        lat = s.get("probe_latency")
        lat_s = f"{lat * 1000:.0f} ms" if isinstance(lat, (int, float)) else "-"
        reason = s.get("reason") or s.get("detail") or ""
        lines.append(f"{s['name']:<12} {s['state']:<12} {lat_s:>8} {s.get('restarts_in_window', 0):>9}  {reason}")
    gpu = doc.get("gpu") or {}
    lines.append("")
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
    models = [m for s in doc.get("services", []) for m in s.get("models", [])]
    for m in models:
        where = "GPU" if m["size_vram"] >= m["size"] > 0 else ("CPU" if m["size_vram"] == 0 else "partly CPU")
        lines.append(f"model {m['name']}: {m['size'] / 1e9:.1f} GB on {where}")
    for name, j in (doc.get("jobs") or {}).items():
        if j.get("state") in ("failed", "started"):
            lines.append(f"job {name}: {j['state']}" + (f" — {j['text']}" if j.get("text") else ""))
    recent = doc.get("recent_actions") or []
    if recent:
        lines.append("")
        lines.append("last actions:")
        for a in recent[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(a["at"]))
            lines.append(f"  {when} {a['kind']} {a['target']} ({a['cause']}): {a['outcome']}")
    return "\n".join(lines)


def _processes_text(procs) -> str:
    if procs is None:
        return "not listed by the driver"
    if not procs:
        return "none"
    return ", ".join(f"PID {p['pid']}" + (f" {p['used_memory'] / 2**30:.1f} GiB" if p.get("used_memory") is not None
                                          else "") for p in procs)


def cmd_doctor(args) -> int:
    from localaid import doctor
    cfg = _config(args)
    checks = doctor.run(cfg)
    print(doctor.render(checks))
    return doctor.exit_code(checks)


def _area(module: str, function: str):
    def run(args) -> int:
        import importlib
        cfg = _config(args)
        return getattr(importlib.import_module(module), function)(args, cfg)
    return run


# --------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="localaid", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"localaid {__version__}")
    p.add_argument("--config", metavar="FILE", default=paths.CONFIG_FILE,
                   help="main configuration file (default: %(default)s)")
    p.add_argument("--conf-d", metavar="DIR", default=paths.CONFIG_DIR,
                   help="directory of *.yaml drop-ins merged in name order (default: %(default)s)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, fn, help_text, description=None):
        sp = sub.add_parser(name, help=help_text, description=description or help_text, formatter_class=fmt)
        sp.set_defaults(func=fn)
        return sp

    add("daemon", cmd_daemon, "run the supervisor (what localaid.service runs)",
        "Run the supervision loop in the foreground: observe units, HTTP health and the GPU every\n"
        "health.interval, repair through systemd, report to systemd (Type=notify, STATUS=,\n"
        "WATCHDOG=1) and to /run/localaid/status.json. SIGHUP reloads the configuration (a bad one\n"
        "is reported and the running one kept); SIGTERM stops the loop and leaves the supervised\n"
        "services running. Refuses to start, with exit status 78, on an invalid configuration.")

    sp = add("status", cmd_status, "show the health of the stack",
             "Show the daemon's last view: one status line, each service with its state, probe latency\n"
             "and restarts in the budget window, the GPU, loaded models and the last actions. Works when\n"
             "the daemon is down (says so, exit status 3). Exit status 0 healthy, 1 unhealthy.")
    sp.add_argument("--json", action="store_true", help="print the raw state as JSON for scripts")

    cp = sub.add_parser("config", help="configuration commands", formatter_class=fmt,
                        description="Configuration commands.")
    csub = cp.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    ck = csub.add_parser("check", help="validate a configuration file", formatter_class=fmt,
                         description="Validate the configuration (by default /etc/localaid/localaid.yaml plus\n"
                                     "conf.d) and print every problem as FILE:LINE: KEY: REASON. Exit status 0\n"
                                     "when valid; 78 (or 1 for an explicit FILE) when not. An empty or missing\n"
                                     "file is valid: every key has a default.")
    ck.add_argument("file", nargs="?", metavar="FILE", help="check only this file (conf.d is not merged)")
    ck.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    ck.set_defaults(func=cmd_config_check)

    add("doctor", cmd_doctor, "check the machine and advise",
        "Run checks with advice: configuration, daemon, systemd, Ollama install and drop-in, Open\n"
        "WebUI venv, service and admin safety.\n"
        "Exit status 1 when something needs fixing, 0 otherwise (warnings included).")

    sp = add("pull", _area("localaid.models", "pull_main"), "download a model into Ollama, with progress",
             "Pull MODEL (e.g. deepseek-r1:8b) through Ollama's API with a progress bar (size, speed,\n"
             "ETA). Talks to Ollama directly: works whether or not the localaid daemon runs.")
    sp.add_argument("model", metavar="MODEL")
    sp = add("models", _area("localaid.models", "models_main"), "list installed and loaded models",
             "List installed models, configured ones not pulled yet and those loaded in memory, with\n"
             "size, VRAM use, whether each runs on the GPU, the CPU or partly both, and whether it fits\n"
             "the GPU's memory with room for its KV cache (else a size that does).")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    up = sub.add_parser("upgrade", help="upgrade Ollama or Open WebUI explicitly", formatter_class=fmt,
                        description="Upgrade a component explicitly; localaid never upgrades on its own.")
    usub = up.add_subparsers(dest="component", metavar="COMPONENT", required=True)
    for comp, module, text in (
        ("ollama", "localaid.provision.ollama",
         "Re-run Ollama's install script for VERSION (default: the configured pin, else the latest),\n"
         "keep localaid's drop-in, restart ollama.service and check its health."),
        ("webui", "localaid.provision.webui",
         "Build the new Open WebUI venv beside the serving one, back up webui.db, switch, start and\n"
         "wait for /health and /ready; on failure switch back and restore the database."),
    ):
        sp = usub.add_parser(comp, help=f"upgrade {comp}", description=text, formatter_class=fmt)
        sp.add_argument("--version", dest="target_version", metavar="V", help="version to install")
        sp.set_defaults(func=_area(module, "upgrade_main"))

    pv = sub.add_parser("provision", help="(run by localaid's units) privileged set-up steps", formatter_class=fmt,
                        description="Privileged, idempotent set-up steps. localaid's daemon starts them as\n"
                                    "short-lived units (localaid-*.service); run by hand only to debug.")
    psub = pv.add_subparsers(dest="step", metavar="STEP", required=True)
    for step, module, fn, text in (
        ("devices", "localaid.provision.devices", "devices_main", "ensure /dev/nvidia* nodes and access"),
        ("ollama", "localaid.provision.ollama", "provision_main", "install/configure Ollama, pull models"),
        ("webui", "localaid.provision.webui", "provision_main", "install/configure Open WebUI"),
    ):
        psub.add_parser(step, help=text, description=text).set_defaults(func=_area(module, fn))

    gp = sub.add_parser("gpu", help="(run by localaid's units) GPU recovery", formatter_class=fmt,
                        description="GPU recovery ladder: stop ollama, reload nvidia_uvm, recreate device\n"
                                    "nodes, start ollama. Started by the daemon as localaid-gpu-recover.service.")
    gsub = gp.add_subparsers(dest="gpu_command", metavar="SUBCOMMAND", required=True)
    gsub.add_parser("recover", help="run the recovery ladder once").set_defaults(
        func=_area("localaid.provision.devices", "gpu_recover_main"))
    rs = gsub.add_parser("resumed", help="(system-sleep hook) check the GPU at once after a resume")
    rs.add_argument("kind", nargs="?", default="suspend", help="suspend, hibernate, hybrid-sleep, ...")
    rs.set_defaults(func=_area("localaid.provision.devices", "resumed_main"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EX_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_FAIL
