"""ollama.service and what it needs: its user, the models directory, (re)start, readiness.

configure_service() writes the drop-in, reloads systemd, enables the unit (the install script
enables it only when `systemctl is-system-running` says running or degraded, not during boot),
(re)starts it when needed and waits until the API answers.

ensure_models_dir() gives ollama.models_dir to user ollama (Ollama issues #2701, #9877) without
ever following a link: the directory is opened O_NOFOLLOW (a models_dir that is itself a link is
refused) and walked by file descriptor (os.fwalk), each entry changed with lchown semantics. A
link planted inside, or the directory swapped for a link to /etc, never makes root chown /etc.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat

from localaid.provision.host import SAFE_PATH, Host
from localaid.provision.job import JobError, Reporter
import localaid.provision.ollama.firewall as firewall
from localaid.provision.ollama.dropin import write_dropin
from localaid.provision.ollama.layout import LAYOUT, OLLAMA_HOME, SERVICE_USER, UNIT, Layout

FREE_SPACE_MIN = 1 << 30  # /usr/local: the real release unpacks to ~2-4 GB with its CUDA libraries
TOOLS = {"curl": "curl", "tar": "tar", "zstd": "zstd", "systemctl": "systemd", "sh": "dash"}
_VERSION_RE = re.compile(r"(?:client version is|ollama version is)\s+v?([0-9][0-9A-Za-z.+\-]*)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ------------------------------------------------------------------------------------- checks
def _which(tool: str) -> str | None:
    return shutil.which(tool, path=SAFE_PATH)


def missing_tools(which=None) -> list[str]:
    """The tools the install script needs that are not on PATH."""
    return [t for t in TOOLS if (which or _which)(t) is None]


def preflight(models_dir: str | None = None, host: Host | None = None) -> list[str]:
    """Problems that would make the install script fail; empty when it can run."""
    problems = []
    missing = missing_tools(host.which if host else None)
    if missing:
        pkgs = " ".join(sorted({TOOLS[t] for t in missing}))
        problems.append(f"missing tools: {', '.join(missing)} (apt install {pkgs})")
    target = "/usr/local"
    try:
        free = (host or Host()).free_bytes(target)
        if free < FREE_SPACE_MIN:
            problems.append(f"only {free / 2**30:.1f} GiB free on {target}; Ollama needs at least "
                            f"{FREE_SPACE_MIN / 2**30:.0f} GiB")
    except OSError as e:
        problems.append(f"cannot check free space on {target}: {e.strerror}")
    return problems


def installed_version(binary: str = LAYOUT.bin, timeout: float = 15, host: Host | None = None) -> str | None:
    """Version of the installed binary (not of a running server), or None when absent/broken.

    `ollama --version` asks the server at OLLAMA_HOST first; pointing it at a closed port makes
    it print only "Warning: client version is X", the binary's own version.
    """
    if not os.access(binary, os.X_OK):
        return None
    env = {"PATH": SAFE_PATH, "HOME": "/nonexistent", "OLLAMA_HOST": "127.0.0.1:1", "LANG": "C.UTF-8"}
    r = (host or Host()).run([binary, "--version"], timeout=timeout, env=env)
    return None if r.timed_out else parse_version_output("\n".join(r.tail))


def parse_version_output(text: str) -> str | None:
    client = re.search(r"client version is\s+v?(\S+)", text)
    if client:
        return client.group(1)
    m = _VERSION_RE.search(text)
    return m.group(1) if m else None


# ------------------------------------------------------------------------- user, models dir
def ensure_user(host: Host) -> bool:
    """User ollama exactly as the install script makes it (system user and group, home
    /usr/share/ollama made from /etc/skel, shell /bin/false); True when it was created. Done
    before the script where the script's sandbox keeps /usr/share read-only."""
    try:
        host.ids(SERVICE_USER)
        return False
    except KeyError:
        pass
    r = host.run(["useradd", "-r", "-s", "/bin/false", "-U", "-m", "-d", OLLAMA_HOME, SERVICE_USER], timeout=60)
    if not r.ok:
        raise JobError(f"cannot create user {SERVICE_USER}: {r.last or f'useradd exited with status {r.rc}'}", r.tail)
    return True


def ensure_models_dir(path: str | None, owner: tuple[int, int]) -> str | None:
    """Create the configured models directory for `owner` (uid, gid) or give it one that exists,
    with everything inside; links are changed themselves, never followed, and a file with other
    hard links is left alone (it may be anyone's). Never deletes anything. Returns what it did."""
    if not path:
        return None
    uid, gid = owner
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise JobError(f"ollama.models_dir {path} is a symbolic link (to {os.readlink(path)}): localaid "
                       "gives the models directory and all inside it to user ollama and follows no link "
                       "to do so; set models_dir to the directory itself")
    created = st is None
    if created:
        os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            created = False
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        raise JobError(f"ollama.models_dir {path}: {e.strerror} (not a directory, or replaced by a link "
                       "meanwhile): refusing to change its owner") from None
    try:
        st = os.fstat(fd)
        if not created and (st.st_uid, st.st_gid) == (uid, gid):
            return None
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o755)
        fixed = skipped = 0
        if not created:
            for _top, dirs, files, dfd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                for name in dirs + files:
                    try:
                        s = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if (s.st_uid, s.st_gid) == (uid, gid):
                        continue
                    if not stat.S_ISDIR(s.st_mode) and s.st_nlink > 1:
                        skipped += 1
                        continue
                    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                    fixed += 1
    finally:
        os.close(fd)
    if created:
        return f"created {path} for user ollama"
    left = f"; {skipped} hard-linked files left as they were" if skipped else ""
    return f"gave {path} to user ollama ({fixed} entries inside changed owner{left})"


def models_dir_step(cfg, rep: Reporter, host: Host) -> None:
    if not cfg.models_dir:
        return
    try:
        owner = host.ids(SERVICE_USER)
    except KeyError:
        raise JobError("user ollama does not exist (the install script creates it): "
                       "cannot give it the models directory") from None
    done = ensure_models_dir(cfg.models_dir, owner)
    if done:
        rep.step(done)


def models_dir_ready(path: str | None) -> bool:
    """Whether Ollama can use its models directory under the drop-in right now (so the drop-in
    may be written before the script restarts the service)."""
    if not path:
        return True
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name == SERVICE_USER
    except (OSError, KeyError):
        return False


# ---------------------------------------------------------------------------------- service
def wait_ready(cfg, host: Host, timeout: float) -> str:
    """Wait until ollama.service answers on the API; its version. Raises JobError."""
    deadline = host.monotonic() + timeout
    while True:
        status, _ = host.get(cfg.url + "/", 2.0)
        if status == 200:
            status, body = host.get(cfg.url + "/api/version", 2.0)
            if status == 200 and isinstance(body, dict) and isinstance(body.get("version"), str):
                return body["version"]
        last = "no answer" if status is None else f"HTTP {status}"
        state = host.unit_state(UNIT)
        if state.active_state == "failed":
            raise JobError(f"{UNIT} failed to start ({state.result}): see journalctl -u ollama")
        if host.monotonic() >= deadline:
            raise JobError(f"{UNIT} is {state.active_state} but Ollama at {cfg.url} does not "
                           f"answer after {timeout:g} s: {last}")
        host.sleep(0.1)


def configure_service(cfg, host: Host, rep: Reporter, restart: bool, timeout: float,
                      fresh_since: float | None = None, layout: Layout = LAYOUT) -> str:
    """Drop-in, daemon-reload, enable, (re)start when needed, wait for the API. Returns version.

    restart: the binary changed. fresh_since: a CLOCK_MONOTONIC time; a service (re)started
    after it (the install script restarts it when the system is running) already runs the new
    binary, so it is restarted only if the drop-in changed.
    """
    changed = write_dropin(cfg, layout)
    if changed:
        rep.step(f"wrote {layout.dropin}")
    if cfg.allow_from:  # does systemd enforce the allow-list here? (never claim it unchecked)
        enforced, words = firewall.probe(host)
        firewall.record(enforced, words, cfg.allow_from)
        (rep.say if enforced else rep.warn)(f"ollama.allow_from: {words}" if enforced else
                                            f"{firewall.NOT_ENFORCED}: {words}")
    host.daemon_reload()
    if not os.path.lexists(layout.enabled_link):
        host.enable(UNIT)
        host.daemon_reload()
        rep.step(f"enabled {UNIT}")
    state = host.unit_state(UNIT)
    if restart and fresh_since is not None and state.active_state == "active" \
            and state.active_enter_mono >= fresh_since:
        restart = False
    if restart or changed or state.active_state != "active":
        rep.step(f"{'restarting' if state.active_state == 'active' else 'starting'} {UNIT}")
        host.restart(UNIT)  # a failed unit is reset first
        # The restart is only queued: until systemd has run it, the old process still answers
        # and wait_ready would take its word, and the pulls that follow would meet the gap.
        host.wait_state(UNIT, ("active", "failed"), timeout)
    return wait_ready(cfg, host, timeout)
