"""localaid's drop-in for ollama.service, and the environment file beside it.

ollama.service belongs to the install script, which rewrites it on every run: localaid's
settings live in ollama.service.d/50-localaid.conf (0644): the environment localaid manages
(OLLAMA_HOST, OLLAMA_MODELS, ...), ordering after localaid-devices.service, hardening.
ollama.environment may carry tokens, so it goes to 50-localaid.env (0600, root), which the
drop-in names in EnvironmentFile= and which systemd reads itself: its values are in no
world-readable file and on no command line. (Settings from an EnvironmentFile override
Environment= lines, as ollama.environment overrode the managed keys when both were lines.)

Paths written into the drop-in are quoted for systemd: spaces and quotes inside one word, `%`
doubled (systemd expands %-specifiers in paths and in Environment=).
"""

from __future__ import annotations

import os

from localaid import fsutil, procfs
from localaid.provision.job import JobError
import localaid.provision.ollama.firewall as firewall
from localaid.provision.ollama.layout import DEFAULT_MODELS_DIR, LAYOUT, OLLAMA_HOME, Layout

# /proc/devices names major 195 "nvidia-frontend" or plain "nvidia" depending on the driver: both,
# so that a node made after this drop-in was written is still reachable by group.
NVIDIA_DEVICE_GROUPS = ("char-nvidiactl", "char-nvidia-frontend", "char-nvidia", "char-nvidia-uvm", "char-nvidia-caps",
                        "char-nvidia-modeset")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@,=")


def unit_quote(text: str, always: bool = False) -> str:
    """`text` as one word of a unit file: as is when it is plain, else in double quotes with
    backslashes and quotes escaped; `%` doubled either way."""
    if "\n" in text or "\r" in text:
        raise JobError(f"{text[:80]!r}: a line break cannot be written into a unit file")
    if not always and text and set(text) <= _PLAIN:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _env_file_value(name: str, value: str) -> str:
    """One line of an EnvironmentFile: inside double quotes systemd takes \\ \" \\` \\$ as the
    character itself and expands nothing (no %-specifiers, no $VARIABLES)."""
    if "\n" in value or "\r" in value:
        raise JobError(f"ollama.environment.{name}: a value cannot contain a line break")
    escaped = "".join("\\" + c if c in '\\"`$' else c for c in value)
    return f'{name}="{escaped}"'


def managed_environment(cfg) -> dict[str, str]:
    """The variables localaid sets from their own configuration keys."""
    env = {"OLLAMA_HOST": cfg.bind}
    if cfg.models_dir:
        env["OLLAMA_MODELS"] = cfg.models_dir
    if cfg.keep_alive is not None:
        env["OLLAMA_KEEP_ALIVE"] = "-1" if cfg.keep_alive == "forever" else cfg.keep_alive
    if cfg.num_parallel is not None:
        env["OLLAMA_NUM_PARALLEL"] = str(cfg.num_parallel)
    if cfg.max_loaded_models is not None:
        env["OLLAMA_MAX_LOADED_MODELS"] = str(cfg.max_loaded_models)
    if cfg.context_length is not None:
        env["OLLAMA_CONTEXT_LENGTH"] = str(cfg.context_length)
    if getattr(cfg, "gpu_overhead", None) is not None:
        env["OLLAMA_GPU_OVERHEAD"] = str(cfg.gpu_overhead)
    return env


def environment(cfg) -> dict[str, str]:
    """Everything ollama.service gets from localaid: the managed keys, then `environment`."""
    return {**managed_environment(cfg), **cfg.environment}


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def render_dropin(cfg, device_nodes: tuple[str, ...] = (), env_file: str = LAYOUT.env_file,
                  wsl: bool = False) -> str:
    """The text of 50-localaid.conf for `cfg` (an OllamaConfig). Pure: tests call it directly.

    device_nodes: NVIDIA nodes present now, allowed by path as well as by device group (a group
    is only known to the kernel once the driver is loaded). wsl: under WSL2 the GPU is /dev/dxg
    (a misc device: allowed by its path alone, never the whole char-misc group).
    """
    models = cfg.models_dir or DEFAULT_MODELS_DIR
    lines = [
        "# Written by localaid (localaid provision ollama); it is rewritten on every run.",
        "# Put your own settings in another drop-in, e.g. ollama.service.d/60-local.conf;",
        "# Ollama's install script rewrites ollama.service itself but never drop-ins.",
        "[Unit]",
        "# GPU device nodes and permissions are fixed before Ollama looks for GPUs (it does so once).",
        "After=localaid-devices.service",
        "Wants=localaid-devices.service",
        "",
        "[Service]",
    ]
    lines += ["Environment=" + unit_quote(f"{k}={v}", always=True) for k, v in managed_environment(cfg).items()]
    lines += ["# ollama.environment (root only: it may hold tokens)",
              "EnvironmentFile=" + unit_quote("-" + env_file)]
    # A models directory inside /home stays writable: read-only homes plus ReadWritePaths.
    protect_home = "read-only" if _under(models, ("/home", "/root", "/run/user")) else "yes"
    lines += [
        "",
        "# Hardening (ollama.service as written by the install script scores 9.2 in",
        "# `systemd-analyze security`). User=ollama is kept; the GPU nodes stay reachable.",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=" + unit_quote("-" + OLLAMA_HOME),
        "ReadWritePaths=" + unit_quote("-" + models),
        f"ProtectHome={protect_home}",
        "PrivateTmp=yes",
        "PrivateUsers=yes",
        "DevicePolicy=closed",
    ]
    lines += [f"DeviceAllow={g} rw" for g in NVIDIA_DEVICE_GROUPS]
    lines += [f"DeviceAllow={unit_quote(n)} rw" for n in device_nodes]
    if wsl:
        lines += ["# WSL2: the GPU is reached through /dev/dxg (dxgkrnl)", "DeviceAllow=/dev/dxg rw"]
    lines += [
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "UMask=0077",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service @resources",
        "SystemCallFilter=~@privileged",
        "SystemCallErrorNumber=EPERM",
    ]
    lines += firewall.dropin_lines(cfg)
    return "\n".join(lines + [""])


def render_env_file(cfg) -> str:
    """The text of 50-localaid.env: ollama.environment, one NAME="value" a line."""
    lines = ["# Written by localaid from ollama.environment (localaid provision ollama); rewritten on",
             "# every run. Read by systemd for ollama.service (EnvironmentFile= in 50-localaid.conf)."]
    lines += [_env_file_value(k, v) for k, v in cfg.environment.items()]
    return "\n".join(lines) + "\n"


def nvidia_nodes(dev: str = "/dev") -> tuple[str, ...]:
    try:
        names = os.listdir(dev)
    except OSError:
        return ()
    out = [os.path.join(dev, n) for n in sorted(names)
           if n == "nvidiactl" or n.startswith("nvidia-uvm") or n == "nvidia-modeset"
           or (n.startswith("nvidia") and n[6:].isdigit())]
    caps = os.path.join(dev, "nvidia-caps")
    if os.path.isdir(caps):
        out += [os.path.join(caps, n) for n in sorted(os.listdir(caps))]
    return tuple(out)


def _current(path: str, text: str, mode: int) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == text and os.fstat(f.fileno()).st_mode & 0o7777 == mode
    except (FileNotFoundError, UnicodeDecodeError):
        return False


def expected(cfg, layout: Layout = LAYOUT) -> dict[str, tuple[str, int]]:
    """path → (text, mode) of the two files, as the configuration wants them now."""
    return {layout.env_file: (render_env_file(cfg), 0o600),
            layout.dropin: (render_dropin(cfg, nvidia_nodes(layout.dev), layout.env_file, procfs.on_wsl2()), 0o644)}


def is_current(cfg, layout: Layout = LAYOUT) -> bool:
    return all(_current(path, text, mode) for path, (text, mode) in expected(cfg, layout).items())


def write_dropin(cfg, layout: Layout = LAYOUT) -> bool:
    """Write the environment file and the drop-in where their text (or mode) changed; True when
    either did (ollama.service must then be restarted to see it)."""
    changed = False
    for path, (text, mode) in expected(cfg, layout).items():  # the secrets first: the drop-in names them
        if _current(path, text, mode):
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fsutil.atomic_write(path, text, mode)  # a fresh 0600 file renamed into place: never readable
        changed = True
    return changed
