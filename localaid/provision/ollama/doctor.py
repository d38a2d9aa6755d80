"""`localaid doctor`'s checks for Ollama: install, installer tools, unit, drop-in, models, API."""

from __future__ import annotations

import json
import os
import pwd
import stat

from localaid import progress
from localaid.provision import safefs
from localaid.quantity import format_size
import localaid.provision.ollama.firewall as firewall
from localaid.provision.host import Host
from localaid.provision.ollama.dropin import is_current
from localaid.provision.ollama.layout import DEFAULT_MODELS_DIR, JOB, LAYOUT, UNIT, Layout
from localaid.provision.ollama.models import client
from localaid.provision.ollama.service import TOOLS, installed_version, missing_tools
from localaid.records import Check

SETUP_HINT = "start it: systemctl start localaid-ollama-setup.service; why: journalctl -u localaid-ollama-setup"


def doctor_checks(config, layout: Layout = LAYOUT) -> list[Check]:
    cfg = config.ollama
    checks = _install_checks(cfg, layout)
    checks += _unit_checks(cfg, layout)
    if cfg.models_dir:
        checks.append(_models_dir_check(cfg.models_dir))
    if cfg.enabled:
        checks += _orphan_check(layout.p(cfg.models_dir or DEFAULT_MODELS_DIR))
    checks += _api_checks(cfg, config.wanted_models)
    if cfg.picks_model:
        checks.append(_pick_check(config))
    if cfg.allow_from:
        enforced, words = firewall.probe(Host())
        checks.append(Check("ollama allow_from", enforced, f"IPAddressAllow=localhost {' '.join(cfg.allow_from)}: "
                            + (words if enforced else f"{firewall.NOT_ENFORCED}; {words}"),
                            "" if enforced else "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1), or "
                                                f"firewall port {cfg.port} with nftables"))
    return checks


def _pick_check(config) -> Check:
    """ollama.models: auto: what was picked and why; a larger model this machine fits now is a
    suggestion (a bigger card never leads to a download by itself)."""
    from localaid.adapters.gpu import machine_now
    from localaid.catalog import Inputs, better
    pick = config.ollama.chosen
    m, gobs = machine_now(config)
    if pick is None:
        why = f"the GPU does not answer ({gobs.state})" if m is None else "the daemon has not run a cycle"
        return Check("ollama model pick", None, f"ollama.models: auto: no model picked yet: {why}",
                     "systemctl status localaid; localaid models --suggest shows what would be picked")
    text = f"ollama.models: auto: {pick.model} picked for {pick.basis}: {pick.reason}"
    bigger = better(pick.model, m, Inputs.of(config)) if m is not None else None
    if bigger:
        return Check("ollama model pick", None, f"{text}; this machine ({m.basis}) now fits {bigger}",
                     f"to use it: set ollama.models: [{bigger}] in {(config.sources or ('/etc/localaid/localaid.yaml',))[0]} "
                     "(a download of its size; localaid models --suggest)")
    return Check("ollama model pick", True, text)


def _install_checks(cfg, layout: Layout) -> list[Check]:
    checks = []
    have = installed_version(layout.bin)
    if have is None:
        checks.append(Check("ollama install", False, f"{layout.bin} is missing or does not run", SETUP_HINT))
    elif cfg.version and have != cfg.version:
        checks.append(Check("ollama install", None, f"Ollama {have} installed, {cfg.version} configured",
                            "localaid upgrade ollama --version " + cfg.version))
    else:
        checks.append(Check("ollama install", True, f"Ollama {have} at {layout.bin}"))
    missing = missing_tools()
    if missing:
        checks.append(Check("ollama installer tools", False, "missing: " + ", ".join(missing),
                            "apt install " + " ".join(sorted({TOOLS[t] for t in missing}))))
    last = progress.read(JOB)
    if last is not None and last.state == "failed":
        checks.append(Check("ollama setup", False, last.text, SETUP_HINT))
    return checks


def _unit_checks(cfg, layout: Layout) -> list[Check]:
    checks = []
    if not os.path.exists(layout.unit_file):
        checks.append(Check("ollama unit", False, f"{layout.unit_file} missing (written by the install script)",
                            SETUP_HINT))
    else:
        enabled = os.path.lexists(layout.enabled_link)
        checks.append(Check("ollama unit", True if enabled else None,
                            f"{UNIT} " + ("enabled" if enabled else "not enabled: it will not start at boot"),
                            "" if enabled else "systemctl enable ollama"))
    if not os.path.exists(layout.dropin):
        checks.append(Check("ollama drop-in", False, f"{layout.dropin} missing", SETUP_HINT))
    else:
        fresh = is_current(cfg, layout)
        checks.append(Check("ollama drop-in", True if fresh else None,
                            layout.dropin + (" matches the configuration" if fresh else
                                             " (or its environment file) differs from the configuration"),
                            "" if fresh else "systemctl start localaid-ollama-setup.service"))
    return checks


def _models_dir_check(path: str) -> Check:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Check("ollama models dir", False, f"{path} does not exist", SETUP_HINT)
    if stat.S_ISLNK(st.st_mode):
        return Check("ollama models dir", False, f"{path} is a symbolic link: localaid gives no link to user ollama",
                     "set ollama.models_dir to the directory itself")
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    ok = owner == "ollama"
    return Check("ollama models dir", ok, f"{path} owned by {owner}", "" if ok else f"chown -R ollama:ollama {path}")


def orphaned_blobs(models_dir: str) -> list[tuple[str, int]]:
    """Blobs (blobs/sha256-<hex>) that no manifest names, with their sizes: what a pull that
    was interrupted or a model removed while Ollama ran with OLLAMA_NOPRUNE leaves (ollama#18595).
    Read only, no link followed; downloads under way (-partial files) are not counted."""
    named = set()
    for top, _dirs, files in os.walk(os.path.join(models_dir, "manifests")):
        for f in files:
            raw = safefs.read(os.path.join(top, f))
            try:
                doc = json.loads(raw) if raw else {}
            except ValueError:
                continue
            for part in [doc.get("config") or {}] + list(doc.get("layers") or []):
                if isinstance(part, dict) and isinstance(part.get("digest"), str):
                    named.add(part["digest"].replace(":", "-"))
    out = []
    blobs = os.path.join(models_dir, "blobs")
    for name in sorted(os.listdir(blobs)) if os.path.isdir(blobs) else []:
        st = os.lstat(os.path.join(blobs, name))
        if stat.S_ISREG(st.st_mode) and name.startswith("sha256-") and "partial" not in name and name not in named:
            out.append((name, st.st_size))
    return out


def _orphan_check(models_dir: str) -> list[Check]:
    try:
        orphans = orphaned_blobs(models_dir)
    except OSError as e:
        return [Check("ollama orphaned blobs", None, f"cannot read {models_dir}: {e.strerror or e}")]
    if not orphans:
        return [Check("ollama orphaned blobs", True, f"none in {models_dir}/blobs")]
    size = sum(n for _, n in orphans)
    listed = ", ".join(f"{name[:19]}… {format_size(n)}" for name, n in orphans[:5]) + (" …" if len(orphans) > 5 else "")
    return [Check("ollama orphaned blobs", None, f"{len(orphans)} blob(s), {format_size(size)}, named by no model in "
                  f"{models_dir}/blobs: {listed}",
                  "systemctl restart ollama removes them (it prunes unreferenced blobs at start unless "
                  "OLLAMA_NOPRUNE is set), or delete them while no pull runs")]


def _api_checks(cfg, models: tuple = ()) -> list[Check]:
    from localaid.adapters.ollama import OllamaError, same_model
    with client(cfg, timeout=3.0) as c:
        probe = c.alive()
        if not probe.ok:
            return [Check("ollama api", False, f"{cfg.url}: {probe.error}", "systemctl status ollama; journalctl -u ollama")]
        try:
            version = c.version()
            installed = [m.name for m in c.tags()]
        except OllamaError as e:
            return [Check("ollama api", False, str(e), "journalctl -u ollama")]
    checks = [Check("ollama api", True, f"Ollama {version} answers at {cfg.url} in {probe.latency * 1000:.0f} ms")]
    if models:
        absent = [s.name for s in models if not any(same_model(s.name, h) for h in installed)]
        checks.append(Check("ollama models", None if absent else True,
                            f"missing: {', '.join(absent)}" if absent else
                            f"all {len(models)} configured models present",
                            f"localaid pull {absent[0]}" if absent else ""))
    return checks
