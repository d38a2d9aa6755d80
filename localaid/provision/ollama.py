"""Ollama through its official install script: install, configure, upgrade, pull models.

`provision_main` runs as root inside localaid-ollama-setup.service (a oneshot the supervisor
starts); `upgrade_main` is `localaid upgrade ollama [--version V]`. Both:

1. get the install script (https URL, plain http only with ollama.allow_http, or a local file
   for air-gapped hosts), check it is a complete shell script (not an HTML page, not cut short,
   sane size, optional sha256 pin), retrying downloads with backoff inside a time budget;
2. run it with OLLAMA_VERSION when a version is wanted, under a timeout, its output streamed line
   by line to the journal and into the progress file; a hard-link snapshot of the binary and
   libraries taken first is put back if the script fails or the new Ollama does not answer;
3. write localaid's drop-in (/etc/systemd/system/ollama.service.d/50-localaid.conf: environment,
   ordering after localaid-devices.service, hardening) — never ollama.service itself, which the
   script overwrites on every run;
4. daemon-reload, enable and (re)start ollama.service (the script enables it only when
   `systemctl is-system-running` says running/degraded, not during boot) and wait until it
   answers; then pull the configured models.

A provision run skips the script when Ollama is installed and either no version is pinned or
the installed one is the pinned one: a second run downloads nothing. Upgrades are explicit.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import os
import pwd
import queue
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from localaid import fsutil, log, paths, progress
from localaid.adapters.systemd import SystemdError
from localaid.records import OLLAMA

JOB = "ollama-setup"
UNIT = "ollama.service"
BIN = "/usr/local/bin/ollama"
LIB = "/usr/local/lib/ollama"
BACKUP = "/usr/local/lib/.ollama-localaid-backup"
UNIT_FILE = "/etc/systemd/system/ollama.service"
DROPIN_DIR = "/etc/systemd/system/ollama.service.d"
DROPIN = os.path.join(DROPIN_DIR, "50-localaid.conf")
OLLAMA_HOME = "/usr/share/ollama"
DEFAULT_MODELS_DIR = OLLAMA_HOME + "/.ollama/models"
LOCK_FILE = os.path.join(paths.RUN_DIR, "ollama-install.lock")
ENABLED_LINK = "/etc/systemd/system/default.target.wants/ollama.service"

SCRIPT_MIN, SCRIPT_MAX = 256, 4 << 20
FREE_SPACE_MIN = 1 << 30  # /usr/local: the real release unpacks to ~2-4 GB with its CUDA libraries
TOOLS = {"curl": "curl", "tar": "tar", "zstd": "zstd", "systemctl": "systemd", "sh": "dash"}
RETRY_DELAYS = (2, 5, 15, 30, 60, 120)
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NVIDIA_DEVICE_GROUPS = ("char-nvidiactl", "char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps",
                        "char-nvidia-modeset")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]")
_VERSION_RE = re.compile(r"(?:client version is|ollama version is)\s+v?([0-9][0-9A-Za-z.+\-]*)")


class ProvisionError(Exception):
    """A step failed; the message is the one line users see in the journal and `localaid status`."""

    def __init__(self, message: str, detail: tuple[str, ...] = ()):
        super().__init__(message)
        self.detail = detail


class ScriptError(ProvisionError):
    """The script could not be obtained or is not fit to run."""


class RefusedError(ScriptError):
    """Refused by configuration (plain http): retrying cannot help."""


# ------------------------------------------------------------------------------------ reporting
class Reporter:
    """Where progress goes: the journal plus /run/localaid/progress/ollama-setup.json (job
    mode), or plain lines on the terminal (`localaid upgrade ollama`)."""

    def __init__(self, job: str | None = JOB, terminal: bool = False):
        self.job = job
        self.terminal = terminal
        self.detail: collections.deque[str] = collections.deque(maxlen=20)
        self._last_write = 0.0

    def step(self, text: str, fraction: float | None = None, **fields) -> None:
        if self.terminal:
            print(text, flush=True)
        else:
            log.info(text, **fields)
        self.progress("running", text, fraction, force=True)

    def warn(self, text: str, **fields) -> None:
        if self.terminal:
            print("warning: " + text, flush=True)
        else:
            log.warning(text, **fields)
        self.progress("running", text, force=True)

    def line(self, text: str) -> None:
        """One line of the installer's output."""
        self.detail.append(text)
        if self.terminal:
            print("  | " + text, flush=True)
        else:
            log.info("installer: " + text)
        self.progress("running", "installing Ollama: " + text[:160])

    def progress(self, state: str, text: str, fraction: float | None = None, force: bool = False) -> None:
        if self.job is None:
            return
        now = time.monotonic()
        if not force and state == "running" and now - self._last_write < 0.5:
            return
        self._last_write = now
        try:
            progress.report(self.job, state, text, fraction, tuple(self.detail))
        except OSError as e:  # progress is a convenience; never fail the work over it
            log.warning("cannot write progress file", error=e)

    def done(self, text: str) -> None:
        if self.terminal:
            print(text, flush=True)
        else:
            log.info(text)
        self.progress("done", text, 1.0)

    def failed(self, text: str, detail: tuple[str, ...] = ()) -> None:
        for d in detail:
            if d not in self.detail:
                self.detail.append(d)
        if self.terminal:
            print("error: " + text, flush=True)
        else:
            log.error(text)
        self.progress("failed", text)


# ------------------------------------------------------------------------ getting the script
def _is_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


def validate_script(data: bytes, sha256: str | None, source: str) -> None:
    """Refuse what is not a complete shell script; raise ScriptError saying why."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in head:
        raise ScriptError(f"install script from {source} is an HTML page, not a shell script "
                          "(a proxy, captive portal or error page answered)")
    if not data.startswith(b"#!"):
        raise ScriptError(f"install script from {source} does not start with #! "
                          f"(first bytes: {data[:40]!r})")
    if len(data) < SCRIPT_MIN:
        raise ScriptError(f"install script from {source} is only {len(data)} bytes: cut short?")
    if len(data) > SCRIPT_MAX:
        raise ScriptError(f"install script from {source} is {len(data)} bytes, more than the "
                          f"{SCRIPT_MAX >> 20} MiB an install script can reasonably be")
    if b"\0" in data:
        raise ScriptError(f"install script from {source} contains NUL bytes: not a shell script")
    with tempfile.NamedTemporaryFile("wb", prefix="localaid-install-", suffix=".sh") as f:
        f.write(data)
        f.flush()
        r = subprocess.run(["sh", "-n", f.name], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["syntax error"])[-1].replace(f.name, "script")
        raise ScriptError(f"install script from {source} is not a complete shell script "
                          f"(truncated download?): {why}")
    if sha256:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise ScriptError(f"install script from {source} has sha256 {got}, but "
                              f"ollama.install_script_sha256 is {sha256.lower()}: refusing to run it")


def _ssl_context() -> ssl.SSLContext:
    """The system trust store (/etc/ssl/certs), as curl in the script uses it."""
    return ssl.create_default_context()


def download(url: str, allow_http: bool, timeout: float) -> bytes:
    """One attempt to GET `url` (proxies from the environment, as curl in the script uses them).

    Redirects are followed, but never to plain http:// unless allowed. The standard library
    rather than httpx: the provisioning job then starts ~0.3 s sooner (httpx's import time).
    """
    import http.client
    import socket
    import urllib.error
    import urllib.request

    class NoDowngrade(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if newurl.startswith("http://") and not allow_http:
                raise RefusedError(f"{url} redirects to plain http:// ({newurl}): refused; "
                                   "set ollama.allow_http: true to accept it")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    if url.startswith("http://") and not allow_http:
        raise RefusedError(f"refusing plain http:// for the install script ({url}); "
                           "use https or set ollama.allow_http: true")
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=_ssl_context()), NoDowngrade)
    request = urllib.request.Request(url, headers={"User-Agent": "localaid", "Accept": "*/*"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > SCRIPT_MAX:
                raise ScriptError(f"install script from {url} is {length} bytes: too big to be one")
            data = resp.read() if length else resp.read(SCRIPT_MAX + 1)
    except urllib.error.HTTPError as e:
        raise ProvisionError(f"HTTP {e.code} from {url}") from None
    except http.client.IncompleteRead as e:
        raise ProvisionError(f"connection to {url} closed early (truncated download): "
                             f"{len(e.partial)} bytes of {length or 'unknown'}") from None
    except (socket.timeout, TimeoutError):
        raise ProvisionError(f"no answer from {url} within {timeout:g} s") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise ProvisionError(f"no answer from {url} within {timeout:g} s") from None
        why = getattr(reason, "strerror", None) or str(reason)
        raise ProvisionError(f"cannot connect to {urlsplit(url).netloc}: {why}") from None
    except (OSError, http.client.HTTPException) as e:
        raise ProvisionError(f"download of {url} failed: {e or type(e).__name__}") from None
    if len(data) > SCRIPT_MAX:
        raise ScriptError(f"install script from {url} is more than {SCRIPT_MAX >> 20} MiB")
    return data


def obtain_script(cfg, rep: Reporter, budget: float, sleep=time.sleep, clock=time.monotonic) -> bytes:
    """The checked install script: read the local file, or download with retries inside `budget` s."""
    source = cfg.install_script
    if not _is_url(source):
        try:
            with open(source, "rb") as f:
                data = f.read(SCRIPT_MAX + 1)
        except OSError as e:
            raise ScriptError(f"install script {source}: {e.strerror}") from None
        validate_script(data, cfg.install_script_sha256, source)
        return data
    if source.startswith("http://") and not cfg.allow_http:
        raise RefusedError(f"refusing plain http:// for the install script ({source}); "
                           "use https or set ollama.allow_http: true")
    deadline = clock() + budget
    per_try = max(3.0, min(60.0, budget / 3))
    attempt = 0
    while True:
        attempt += 1
        rep.step(f"downloading install script from {source}" + (f" (attempt {attempt})" if attempt > 1 else ""))
        try:
            data = download(source, cfg.allow_http, min(per_try, max(1.0, deadline - clock())))
            validate_script(data, cfg.install_script_sha256, source)
            return data
        except RefusedError:
            raise
        except ProvisionError as e:
            what = str(e) if isinstance(e, ScriptError) else f"install script download failed: {e}"
            delay = RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]
            if deadline - clock() < delay + 1:
                raise ScriptError(f"{what}; gave up after {attempt} attempt{'s' if attempt > 1 else ''}") from None
            rep.warn(f"{what}, retrying in {delay} s")
            sleep(delay)


# ------------------------------------------------------------------------------------- checks
def _which(tool: str) -> str | None:
    return shutil.which(tool, path=SAFE_PATH)


def preflight(models_dir: str | None) -> list[str]:
    """Problems that would make the install script fail; empty when it can run."""
    problems = []
    missing = [t for t in TOOLS if _which(t) is None]
    if missing:
        pkgs = " ".join(sorted({TOOLS[t] for t in missing}))
        problems.append(f"missing tools: {', '.join(missing)} (apt install {pkgs})")
    target = "/usr/local"
    try:
        st = os.statvfs(target)
        free = st.f_bavail * st.f_frsize
        if free < FREE_SPACE_MIN:
            problems.append(f"only {free / 2**30:.1f} GiB free on {target}; Ollama needs at least "
                            f"{FREE_SPACE_MIN / 2**30:.0f} GiB")
    except OSError as e:
        problems.append(f"cannot check free space on {target}: {e.strerror}")
    return problems


def installed_version(binary: str = BIN, timeout: float = 15) -> str | None:
    """Version of the installed binary (not of a running server), or None when absent/broken.

    `ollama --version` asks the server at OLLAMA_HOST first; pointing it at a closed port makes
    it print only "Warning: client version is X", the binary's own version.
    """
    if not os.access(binary, os.X_OK):
        return None
    env = {"PATH": SAFE_PATH, "HOME": "/nonexistent", "OLLAMA_HOST": "127.0.0.1:1", "LANG": "C.UTF-8"}
    try:
        r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version_output(r.stdout + "\n" + r.stderr)


def parse_version_output(text: str) -> str | None:
    client = re.search(r"client version is\s+v?(\S+)", text)
    if client:
        return client.group(1)
    m = _VERSION_RE.search(text)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------- drop-in
def _quote_env(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ProvisionError(f"ollama.environment.{name}: a value cannot contain a line break")
    text = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{text}"'


def environment(cfg) -> dict[str, str]:
    """The environment localaid sets for ollama.service (managed keys, then `environment`)."""
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
    for k, v in cfg.environment.items():
        env[k] = v
    return env


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def render_dropin(cfg, device_nodes: tuple[str, ...] = ()) -> str:
    """The text of 50-localaid.conf for `cfg` (an OllamaConfig). Pure: tests call it directly.

    device_nodes: NVIDIA nodes present now, allowed by path as well as by device group (a group
    is only known to the kernel once the driver is loaded).
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
    lines += [_quote_env(k, v) for k, v in environment(cfg).items()]
    # A models directory inside /home stays writable: read-only homes plus ReadWritePaths.
    protect_home = "read-only" if _under(models, ("/home", "/root", "/run/user")) else "yes"
    lines += [
        "",
        "# Hardening (ollama.service as written by the install script scores 9.2 in",
        "# `systemd-analyze security`). User=ollama is kept; the GPU nodes stay reachable.",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths=-{OLLAMA_HOME}",
        f"ReadWritePaths=-{models}",
        f"ProtectHome={protect_home}",
        "PrivateTmp=yes",
        "PrivateUsers=yes",
        "DevicePolicy=closed",
    ]
    lines += [f"DeviceAllow={g} rw" for g in NVIDIA_DEVICE_GROUPS]
    lines += [f"DeviceAllow={n} rw" for n in device_nodes]
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
        "",
    ]
    return "\n".join(lines)


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


def write_dropin(cfg) -> bool:
    """Write the drop-in if its text changed; True when it did."""
    text = render_dropin(cfg, nvidia_nodes())
    try:
        with open(DROPIN, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(DROPIN_DIR, mode=0o755, exist_ok=True)
    fsutil.atomic_write(DROPIN, text, 0o644)
    return True


# ------------------------------------------------------------------------------ models directory
def ensure_models_dir(path: str | None) -> str | None:
    """Create the configured models directory owned by ollama:ollama (issues #2701, #9877); fix
    the owner of one that exists. Never deletes anything. Returns what it did, or None."""
    if not path:
        return None
    try:
        pw = pwd.getpwnam("ollama")
    except KeyError:
        raise ProvisionError("user ollama does not exist (the install script creates it): "
                             "cannot give it the models directory") from None
    created = not os.path.isdir(path)
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.stat(path)
    if not created and (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid):
        return None
    fixed = 0
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o755)
    if not created:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                s = os.lstat(p)
                if (s.st_uid, s.st_gid) != (pw.pw_uid, pw.pw_gid):
                    os.lchown(p, pw.pw_uid, pw.pw_gid)
                    fixed += 1
    return f"created {path} for user ollama" if created else \
        f"gave {path} to user ollama ({fixed} entries inside changed owner)"


# ------------------------------------------------------------------------------------ snapshot
class Snapshot:
    """Hard-link copy of /usr/local/bin/ollama and /usr/local/lib/ollama taken before the script
    runs. The script removes the library directory and unpacks new files (new inodes), so the
    links keep the old release intact at the cost of a few directory entries."""

    def __init__(self, root: str = BACKUP, binary: str = BIN, lib: str = LIB):
        self.root, self.binary, self.lib = root, binary, lib
        self.taken = False

    def take(self) -> bool:
        if not os.path.exists(self.binary):
            return False
        self.discard()
        os.makedirs(self.root, mode=0o700)
        _link_or_copy(self.binary, os.path.join(self.root, "ollama"))
        if os.path.isdir(self.lib):
            _link_tree(self.lib, os.path.join(self.root, "lib"))
        self.taken = True
        return True

    def restore(self) -> None:
        if not self.taken:
            return
        tmp = self.binary + ".localaid-restore"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _link_or_copy(os.path.join(self.root, "ollama"), tmp)
        os.replace(tmp, self.binary)
        saved_lib = os.path.join(self.root, "lib")
        if os.path.isdir(saved_lib):
            if os.path.lexists(self.lib):
                shutil.rmtree(self.lib, ignore_errors=True)
            os.rename(saved_lib, self.lib)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.taken = False


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst, follow_symlinks=False)


def _link_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)


# ---------------------------------------------------------------------------------- the script
def run_script(script: bytes, version: str | None, timeout: float, rep: Reporter) -> tuple[int, str]:
    """Run the installer as root; (exit status, one-line reason). Output goes to `rep` line by line."""
    with tempfile.NamedTemporaryFile("wb", prefix="ollama-install-", suffix=".sh", delete=False) as f:
        f.write(script)
        path = f.name
    env = {"PATH": SAFE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root",
           "LOGNAME": "root"}
    if version:
        env["OLLAMA_VERSION"] = version
    try:
        proc = subprocess.Popen(["sh", path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True)
    except OSError as e:
        os.unlink(path)
        return 127, f"cannot run the install script: {e.strerror}"
    lines: queue.Queue[str | None] = queue.Queue()

    def reader():
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True, name="installer-output").start()
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            try:
                raw = lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                timed_out = True
                break
            if raw is None:
                break
            for part in _ANSI.sub("", raw).replace("\r", "\n").splitlines():
                text = part.strip()
                if text:
                    rep.line(text)
        if timed_out:
            _kill_group(proc)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        os.unlink(path)
    if timed_out:
        return rc if rc else 124, f"install script did not finish within {timeout:g} s and was stopped"
    if rc != 0:
        return rc, f"install script exited with status {rc}"
    return 0, "install script finished"


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------- the service
def _systemd():
    from localaid.adapters.systemd import Systemd
    return Systemd(timeout=30)  # the adapter makes a cheap first call on a new connection


def _client(cfg, timeout: float = 5.0):
    from localaid.adapters.ollama import OllamaClient
    return OllamaClient(cfg.url, timeout=timeout)


def wait_ready(cfg, sd, timeout: float) -> str:
    """Wait until ollama.service answers on the API; its version. Raises ProvisionError."""
    from localaid.adapters import http
    deadline = time.monotonic() + timeout
    while True:
        probe, _ = http.request(cfg.url + "/", 2.0)
        if probe.ok:
            probe, body = http.request(cfg.url + "/api/version", 2.0)
            if probe.ok and isinstance(body, dict) and isinstance(body.get("version"), str):
                return body["version"]
        last = probe.error or "no version in the answer"
        state = sd.state(UNIT)
        if state.active_state == "failed":
            raise ProvisionError(f"{UNIT} failed to start ({state.result}): see journalctl -u ollama")
        if time.monotonic() >= deadline:
            raise ProvisionError(f"{UNIT} is {state.active_state} but Ollama at {cfg.url} does not "
                                 f"answer after {timeout:g} s: {last}")
        time.sleep(0.1)


def configure_service(cfg, sd, rep: Reporter, restart: bool, timeout: float,
                      fresh_since: float | None = None) -> str:
    """Drop-in, daemon-reload, enable, (re)start when needed, wait for the API. Returns version.

    restart: the binary changed. fresh_since: a CLOCK_MONOTONIC time; a service (re)started
    after it (the install script restarts it when the system is running) already runs the new
    binary, so it is restarted only if the drop-in changed.
    """
    changed = write_dropin(cfg)
    if changed:
        rep.step(f"wrote {DROPIN}")
    sd.daemon_reload()
    if not os.path.lexists(ENABLED_LINK):
        sd.enable(UNIT)
        sd.daemon_reload()
        rep.step(f"enabled {UNIT}")
    state = sd.state(UNIT)
    if restart and fresh_since is not None and state.active_state == "active" \
            and state.active_enter_mono >= fresh_since:
        restart = False
    if restart or changed or state.active_state != "active":
        verb = "restarting" if state.active_state == "active" else "starting"
        rep.step(f"{verb} {UNIT}")
        if state.active_state == "failed":
            sd.reset_failed(UNIT)
        sd.restart(UNIT)
    return wait_ready(cfg, sd, timeout)


def _format_size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def pull_models(cfg, rep: Reporter) -> list[str]:
    """Pull configured models that Ollama does not have yet; the failures (empty when none)."""
    from localaid.adapters.ollama import OllamaError, PullProgress, same_model
    if not cfg.models:
        return []
    failures = []
    with _client(cfg, timeout=10.0) as client:
        have = [m.name for m in client.tags()]
        missing = [s.name for s in cfg.models if not any(same_model(s.name, h) for h in have)]
        for i, name in enumerate(missing):
            rep.step(f"pulling model {name} ({i + 1}/{len(missing)})")
            layers: dict[str, tuple[int, int]] = {}

            def on_progress(p: PullProgress, name=name):
                if p.digest and p.total:
                    layers[p.digest] = (p.completed or 0, p.total)
                total = sum(t for _, t in layers.values())
                done = sum(c for c, _ in layers.values())
                if total:
                    rep.progress("running", f"pulling model {name}: {_format_size(done)} of "
                                            f"{_format_size(total)}", done / total)
                else:
                    rep.progress("running", f"pulling model {name}: {p.status}")

            try:
                client.pull(name, on_progress)
                rep.step(f"pulled model {name}")
            except OllamaError as e:
                rep.warn(f"model {name} could not be pulled: {e}")
                failures.append(f"{name}: {e}")
    return failures


# ------------------------------------------------------------------------------- the workflow
@contextlib.contextmanager
def _locked():
    os.makedirs(os.path.dirname(LOCK_FILE), mode=0o755, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ProvisionError("another Ollama install or upgrade is running "
                                 "(localaid-ollama-setup.service or `localaid upgrade ollama`)") from None
        yield


@contextlib.contextmanager
def _maintenance():
    """/run/localaid/maintenance/ollama with our PID: the supervisor keeps its hands off meanwhile."""
    path = os.path.join(paths.MAINTENANCE_DIR, OLLAMA)
    os.makedirs(paths.MAINTENANCE_DIR, mode=0o755, exist_ok=True)
    fsutil.atomic_write(path, f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass
class Outcome:
    installed: bool  # the script ran and succeeded
    version: str  # what the running server reports


def install_and_start(cfg, rep: Reporter, want_version: str | None, run: bool, ready_timeout: float,
                      sd=None, before: str | None = None) -> Outcome:
    """Run the script (when `run`), configure and start the service, roll back on failure.

    before: the installed version, if the caller knows it. The drop-in is written before the
    script runs, so the restart the script does itself (when the system is running) already
    applies it and a second restart is saved."""
    sd = sd or _systemd()
    if not run:
        version = configure_service(cfg, sd, rep, restart=False, timeout=ready_timeout)
        return Outcome(False, version)
    problems = preflight(cfg.models_dir)
    if problems:
        raise ProvisionError("cannot install Ollama: " + "; ".join(problems))
    budget = min(cfg.install_timeout / 3, 600.0)
    script = obtain_script(cfg, rep, budget)
    snap = Snapshot()
    with _maintenance():
        if snap.take():
            rep.step(f"kept a copy of Ollama {before or '(unknown version)'} to restore if the install fails")
        target = want_version or "the newest release"
        rep.step(f"running the install script for Ollama {target}")
        if _models_dir_ready(cfg.models_dir) and write_dropin(cfg):
            rep.step(f"wrote {DROPIN}")
        script_started = time.monotonic()
        rc, why = run_script(script, want_version, cfg.install_timeout, rep)
        try:
            if rc != 0:
                raise ProvisionError(why, tuple(rep.detail))
            ensure_models_dir_step(cfg, rep)
            version = configure_service(cfg, sd, rep, restart=True, timeout=ready_timeout,
                                        fresh_since=script_started)
            # The service now runs the new binary: its answer is the installed version.
            if want_version and version != want_version:
                raise ProvisionError(f"the install script left Ollama {version} running, not the "
                                     f"requested {want_version}")
        except ProvisionError as e:
            if not snap.taken:
                raise
            rep.warn(f"{e}; putting Ollama {before or '(previous)'} back")
            snap.restore()
            try:
                version = configure_service(cfg, sd, rep, restart=True, timeout=ready_timeout)
            except ProvisionError as e2:
                raise ProvisionError(f"{e}; the previous Ollama was put back but does not run: {e2}",
                                     e.detail) from None
            raise ProvisionError(f"{e}; previous Ollama {version} restored and running", e.detail) from None
        snap.discard()
    return Outcome(True, version)


def _models_dir_ready(path: str | None) -> bool:
    """Whether Ollama can use its models directory under the drop-in right now (so the drop-in
    may be written before the script restarts the service)."""
    if not path:
        return True
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name == "ollama"
    except (OSError, KeyError):
        return False


def ensure_models_dir_step(cfg, rep: Reporter) -> None:
    done = ensure_models_dir(cfg.models_dir)
    if done:
        rep.step(done)


def _ready_timeout(config) -> float:
    return max(60.0, config.health.ollama_start_grace)


def provision_main(args, config) -> int:
    cfg = config.ollama
    rep = Reporter(JOB)
    if os.geteuid() != 0:
        rep.failed("localaid provision ollama must run as root (it runs in localaid-ollama-setup.service)")
        return 1
    try:
        with _locked():
            have = installed_version()
            run = have is None or (cfg.version is not None and have != cfg.version)
            if have is None:
                rep.step("Ollama is not installed: installing it with its install script")
            elif run:
                rep.step(f"Ollama {have} is installed, {cfg.version} is configured: running the install script")
            else:
                rep.step(f"Ollama {have} is installed" + (" (the configured version)" if cfg.version else
                                                          "; upgrades are explicit: localaid upgrade ollama"))
                ensure_models_dir_step(cfg, rep)
            outcome = install_and_start(cfg, rep, cfg.version, run, _ready_timeout(config), before=have)
            failures = pull_models(cfg, rep)
    except ProvisionError as e:
        rep.failed(f"ollama setup failed: {e}", e.detail)
        return 1
    except SystemdError as e:
        rep.failed(f"ollama setup failed: systemd: {e}")
        return 1
    except Exception as e:  # an unforeseen failure still ends in one clear line, not a traceback
        rep.failed(f"ollama setup failed: unexpected error: {e!r}")
        if os.environ.get("LOCALAID_DEBUG"):
            raise
        return 1
    n = len(cfg.models)
    models = f"; {n - len(failures)}/{n} configured models present" if n else ""
    if failures:
        rep.failed(f"Ollama {outcome.version} running, but model pulls failed: " + "; ".join(failures))
        return 1
    rep.done(f"Ollama {outcome.version} " + ("installed and " if outcome.installed else "") +
             f"running at {cfg.url}{models}")
    return 0


def upgrade_main(args, config) -> int:
    cfg = config.ollama
    rep = Reporter(None, terminal=True)
    target = getattr(args, "target_version", None)
    target = target[1:] if target and target[:1] in "vV" else target
    target = target or cfg.version
    if os.geteuid() != 0:
        rep.failed("upgrading Ollama needs root: sudo localaid upgrade ollama")
        return 1
    try:
        with _locked():
            have = installed_version()
            if have is not None and target is not None and have == target:
                sd = _systemd()
                version = configure_service(cfg, sd, rep, restart=False, timeout=_ready_timeout(config))
                rep.done(f"Ollama is already {have} (running: {version}); nothing to do")
                return 0
            rep.step(f"upgrading Ollama {have or '(not installed)'} → {target or 'the newest release'}")
            outcome = install_and_start(cfg, rep, target, True, _ready_timeout(config), before=have)
    except SystemdError as e:
        rep.failed(f"upgrade failed: systemd: {e}")
        return 1
    except ProvisionError as e:
        rep.failed(f"upgrade failed: {e}")
        for line in e.detail[-8:]:
            print("  | " + line)
        return 1
    rep.done(f"Ollama {outcome.version} installed and running at {cfg.url} (was {have or 'not installed'})")
    if cfg.version and cfg.version != outcome.version:
        rep.warn(f"ollama.version in the configuration pins {cfg.version}: set it to {outcome.version}, "
                 f"or the next `localaid provision ollama` reinstalls {cfg.version}")
    return 0


# ------------------------------------------------------------------------------------- doctor
def doctor_checks(config) -> list:
    from localaid.records import Check
    from localaid.adapters.ollama import OllamaError, same_model
    cfg = config.ollama
    checks = []
    setup_hint = "start it: systemctl start localaid-ollama-setup.service; why: journalctl -u localaid-ollama-setup"
    have = installed_version()
    if have is None:
        checks.append(Check("ollama install", False, f"{BIN} is missing or does not run", setup_hint))
    elif cfg.version and have != cfg.version:
        checks.append(Check("ollama install", None, f"Ollama {have} installed, {cfg.version} configured",
                            "localaid upgrade ollama --version " + cfg.version))
    else:
        checks.append(Check("ollama install", True, f"Ollama {have} at {BIN}"))
    missing = [t for t in TOOLS if _which(t) is None]
    if missing:
        checks.append(Check("ollama installer tools", False, "missing: " + ", ".join(missing),
                            "apt install " + " ".join(sorted({TOOLS[t] for t in missing}))))
    last = progress.read(JOB)
    if last is not None and last.state == "failed":
        checks.append(Check("ollama setup", False, last.text, setup_hint))
    if not os.path.exists(UNIT_FILE):
        checks.append(Check("ollama unit", False, f"{UNIT_FILE} missing (written by the install script)",
                            setup_hint))
    else:
        enabled = os.path.lexists(ENABLED_LINK)
        checks.append(Check("ollama unit", True if enabled else None,
                            f"{UNIT} " + ("enabled" if enabled else "not enabled: it will not start at boot"),
                            "" if enabled else "systemctl enable ollama"))
    try:
        with open(DROPIN, encoding="utf-8") as f:
            current = f.read()
        fresh = current == render_dropin(cfg, nvidia_nodes())
        checks.append(Check("ollama drop-in", True if fresh else None,
                            DROPIN + (" matches the configuration" if fresh else " differs from the configuration"),
                            "" if fresh else "systemctl start localaid-ollama-setup.service"))
    except FileNotFoundError:
        checks.append(Check("ollama drop-in", False, f"{DROPIN} missing", setup_hint))
    if cfg.models_dir:
        try:
            st = os.stat(cfg.models_dir)
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            ok = owner == "ollama"
            checks.append(Check("ollama models dir", ok, f"{cfg.models_dir} owned by {owner}",
                                "" if ok else f"chown -R ollama:ollama {cfg.models_dir}"))
        except FileNotFoundError:
            checks.append(Check("ollama models dir", False, f"{cfg.models_dir} does not exist", setup_hint))
    with _client(cfg, timeout=3.0) as client:
        probe = client.alive()
        if not probe.ok:
            checks.append(Check("ollama api", False, f"{cfg.url}: {probe.error}",
                                "systemctl status ollama; journalctl -u ollama"))
            return checks
        try:
            version = client.version()
            installed = [m.name for m in client.tags()]
        except OllamaError as e:
            checks.append(Check("ollama api", False, str(e), "journalctl -u ollama"))
            return checks
        checks.append(Check("ollama api", True, f"Ollama {version} answers at {cfg.url} "
                                                f"in {probe.latency * 1000:.0f} ms"))
        absent = [s.name for s in cfg.models if not any(same_model(s.name, h) for h in installed)]
        if cfg.models:
            checks.append(Check("ollama models", None if absent else True,
                                f"missing: {', '.join(absent)}" if absent else
                                f"all {len(cfg.models)} configured models present",
                                f"localaid pull {absent[0]}" if absent else ""))
    return checks
