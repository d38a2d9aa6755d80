"""Boot a real systemd inside systemd-nspawn and drive it from the host.

The host (a developer machine or CI) has no systemd as PID 1, so integration
tests boot their own: a cached Debian root file system (tools/build-rootfs) is
overlaid (or copied) per container, booted with ``systemd-nspawn -b`` on the
host network, and commands run inside with ``nsenter``.

    with Container(rootfs, binds=[(deb_dir, "/mnt", True)]) as c:
        c.run(["apt-get", "install", "-y", "/mnt/localaid_0.2.0_all.deb"])
        assert c.systemctl("is-active", "localaid", check=False).stdout.strip() == "active"

Teardown always runs (context manager, atexit, SIGTERM/SIGHUP): power off,
kill the nspawn process this object started (by PID only), drop the copy.
Containers leaked by a killed run (SIGKILL) are reaped by the next one, again
by the PIDs recorded in their state file.

Only the standard library is used, so any python3 on the host can run this.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

__all__ = ["Container", "ContainerError", "wait_for", "reap_stale", "free_port", "standin_unit", "WORK_BASE"]

WORK_BASE = Path(os.environ.get("LOCALAID_IT_WORKDIR", "/var/tmp/localaid-it"))
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_ENV = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
             "DEBIAN_FRONTEND": "noninteractive", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

T = TypeVar("T")


class ContainerError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers

def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.25,
             message: str | Callable[[], str] | None = None) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    Exceptions raised by the predicate count as "not yet"; the last one is
    chained onto the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried on purpose
            last_exc = exc
        if time.monotonic() >= deadline:
            what = (message() if callable(message) else message) or getattr(predicate, "__name__", "condition")
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from last_exc
        time.sleep(interval)


def _proc_starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int, starttime: int | None) -> bool:
    st = _proc_starttime(pid)
    return st is not None and (starttime is None or st == starttime)


def _overlay_supported() -> bool:
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/")
    out = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                out.append(mnt)
    return sorted(out, reverse=True)


def _remove_tree(path: Path) -> None:
    for mnt in _mounts_under(path):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# --------------------------------------------------------------------------- registry

_live: dict[int, "Container"] = {}
_live_lock = threading.Lock()
_handlers_installed = False


def _teardown_all() -> None:
    with _live_lock:
        items = list(_live.values())
    for c in items:
        try:
            c.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _on_signal(signum, frame):  # noqa: ARG001
    _teardown_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_teardown_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)
    # SIGINT: Python raises KeyboardInterrupt, pytest runs fixture finalizers,
    # and atexit catches whatever is left.


def reap_stale(base: Path = WORK_BASE) -> list[str]:
    """Remove containers whose owning process is gone (e.g. a SIGKILLed run).

    Kills only the nspawn PID recorded in the container's state file, and only
    if that PID still has the recorded start time.
    """
    reaped = []
    if not base.is_dir():
        return reaped
    for d in base.iterdir():
        state_file = d / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            # no state yet: a container being created right now, or junk.
            if time.time() - d.stat().st_mtime > 600:
                _remove_tree(d)
                reaped.append(d.name)
            continue
        if _alive(state["owner_pid"], state.get("owner_start")):
            continue
        pid, st = state.get("nspawn_pid"), state.get("nspawn_start")
        if pid and _alive(pid, st):
            for child in _children(pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(50):
                if not _alive(pid, st):
                    break
                time.sleep(0.1)
        _remove_tree(d)
        reaped.append(d.name)
    return reaped


# --------------------------------------------------------------------------- container

Bind = tuple[str | os.PathLike, str, bool]


class Container:
    """One booted systemd container. Use as a context manager, or start()/stop()."""

    def __init__(self, rootfs: str | os.PathLike, binds: Iterable[Bind] = (), name: str | None = None,
                 boot_timeout: float = 90.0, copy_mode: str = "auto",
                 private_network: bool = False, nspawn_args: Sequence[str] = ()):
        self.rootfs = Path(rootfs)
        if not (self.rootfs / "usr/lib/systemd/systemd").exists() and \
                not (self.rootfs / "lib/systemd/systemd").exists():
            raise ContainerError(f"{self.rootfs} does not look like a systemd root file system")
        self.binds = [(Path(h), g, bool(ro)) for h, g, ro in binds]
        base = re.sub(r"[^a-z0-9-]", "-", (name or "localaid-it").lower()).strip("-")[:40] or "c"
        self.name = f"{base}-{uuid.uuid4().hex[:6]}"
        self.boot_timeout = boot_timeout
        if copy_mode == "auto":
            copy_mode = "overlay" if _overlay_supported() else "copy"
        if copy_mode not in ("overlay", "copy"):
            raise ValueError(f"copy_mode must be auto, overlay or copy, not {copy_mode!r}")
        self.copy_mode = copy_mode
        # Default: the host's network, so tests reach servers on host loopback. Containers then
        # share ports with each other (and with concurrent test runs): fakes that listen should
        # use free ports, or ask for private_network=True (own loopback, no outside access).
        self.private_network = private_network
        self.nspawn_args = list(nspawn_args)
        self.workdir = WORK_BASE / self.name
        self.root = self.workdir / "root"  # container root as seen by nspawn
        self.log_path = self.workdir / "nspawn.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.timings: dict[str, float] = {}
        self._stopped = False

    # ---- lifecycle

    def __enter__(self) -> "Container":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Container {self.name} leader={self.leader} mode={self.copy_mode}>"

    def start(self) -> "Container":
        _install_handlers()
        reap_stale()
        self.workdir.mkdir(parents=True)
        with _live_lock:
            _live[id(self)] = self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def reboot(self, timeout: float = 60.0) -> None:
        """Power off and boot the same root again, its changes kept: a reboot (/run starts empty,
        enabled units start, /var and /etc stay)."""
        subprocess.run(self._nsenter(["systemctl", "poweroff", "--no-block"]), capture_output=True, timeout=5,
                       check=False)
        self.proc.wait(timeout=timeout)
        self.leader = None
        self._start(again=True)

    def _start(self, again: bool = False) -> None:
        t0 = time.monotonic()
        self.root.mkdir(exist_ok=again)
        nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(self.root),
                  "-b", "--console=passive", f"--machine={self.name}"]
        for host, guest, ro in self.binds:
            if not host.exists():
                raise ContainerError(f"bind source {host} does not exist")
            nspawn.append(f"--bind{'-ro' if ro else ''}={host}:{guest}")
        if self.private_network:
            nspawn.append("--private-network")
        nspawn += self.nspawn_args
        if self.copy_mode == "overlay":
            upper, work = self.workdir / "upper", self.workdir / "work"
            upper.mkdir(exist_ok=again)
            work.mkdir(exist_ok=again)
            # Mount the overlay inside a private mount namespace whose only
            # process is nspawn: it disappears with nspawn, even after SIGKILL.
            opts = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
            script = 'mount -t overlay overlay -o "$1" "$2" && shift 2 && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                    opts, str(self.root), *nspawn]
        else:
            if not again:
                subprocess.run(["cp", "-a", "--reflink=auto", "-T", str(self.rootfs), str(self.root)],
                               check=True)
            argv = nspawn
        self.timings["copy"] = time.monotonic() - t0
        log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "LISTEN_"))}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        log.close()
        self._write_state()
        self.leader = wait_for(self._find_leader, timeout=20, interval=0.05,
                               message=f"the container's PID 1 ({self.name})")
        self._write_state()
        try:
            wait_for(self._booted, timeout=self.boot_timeout, interval=0.25,
                     message=f"systemctl is-system-running in {self.name}")
        except TimeoutError as exc:
            raise ContainerError(f"{self.name} did not finish booting:\n{self._diagnostics()}") from exc
        self.timings["boot"] = time.monotonic() - t0 - self.timings["copy"]

    def _write_state(self) -> None:
        state = {"owner_pid": os.getpid(), "owner_start": _proc_starttime(os.getpid()),
                 "nspawn_pid": self.proc.pid if self.proc else None,
                 "nspawn_start": _proc_starttime(self.proc.pid) if self.proc else None,
                 "leader": self.leader, "mode": self.copy_mode, "rootfs": str(self.rootfs)}
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.workdir / "state.json")

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self._nspawn_log()}")
        for child in _children(self.proc.pid):
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
            except OSError:
                pass
        return None

    def _booted(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self._nspawn_log()}")
        r = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
        state = r.stdout.strip()
        if state in ("running", "degraded"):
            self.boot_state = state
            return True
        if state in ("maintenance", "stopping"):
            raise ContainerError(f"{self.name} reached {state}:\n{self._diagnostics()}")
        return False

    def _nspawn_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _diagnostics(self) -> str:
        parts = [f"--- nspawn output\n{self._nspawn_log()}"]
        if self.leader and self.running:
            for cmd in (["systemctl", "list-jobs", "--no-pager"],
                        ["systemctl", "--failed", "--no-pager"],
                        ["journalctl", "--no-pager", "-b", "-n", "150"]):
                r = self.run(cmd, check=False, timeout=15)
                parts.append(f"--- {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        return "\n".join(parts)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Power off, kill what is left (by PID), remove the copy. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.running and self.leader:
                subprocess.run(self._nsenter(["systemctl", "poweroff", "--no-block"]),
                               capture_output=True, timeout=5, check=False)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            if self.running:
                self.proc.send_signal(signal.SIGTERM)  # nspawn forwards poweroff to PID 1
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if self.running:
                if self.leader and _proc_starttime(self.leader) is not None:
                    try:
                        os.kill(self.leader, signal.SIGKILL)  # takes the whole PID namespace
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(timeout=10)
        finally:
            _remove_tree(self.workdir)
            with _live_lock:
                _live.pop(id(self), None)

    # ---- commands

    def _nsenter(self, argv: Sequence[str], user: str | None = None, env: dict | None = None) -> list[str]:
        if not self.leader:
            raise ContainerError("container not started")
        guest_env = dict(GUEST_ENV, **(env or {}))
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
               *(f"{k}={v}" for k, v in guest_env.items())]
        if user is not None:
            cmd += ["runuser", "-u", user, "--"]
        return cmd + [str(a) for a in argv]

    def run(self, cmd: str | Sequence[str], check: bool = True, timeout: float | None = 120,
            input: str | bytes | None = None, user: str | None = None, env: dict | None = None,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the container (all namespaces of its PID 1).

        ``cmd`` is an argv list, or a string that is split with shlex.
        Raises ContainerError (with stdout/stderr) when check and it fails.
        """
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        if isinstance(input, bytes):
            text = False
        r = subprocess.run(self._nsenter(argv, user=user, env=env), input=input, capture_output=True,
                           text=text, timeout=timeout, check=False)
        if check and r.returncode != 0:
            out = r.stdout if text else r.stdout.decode(errors="replace")
            err = r.stderr if text else r.stderr.decode(errors="replace")
            raise ContainerError(f"{shlex.join(argv)} exited {r.returncode} in {self.name}\n"
                                 f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}")
        return r

    def sh(self, script: str, check: bool = True, timeout: float | None = 120, **kw) -> subprocess.CompletedProcess:
        """Run a shell script (``sh -euc``) inside the container."""
        return self.run(["sh", "-euc", script], check=check, timeout=timeout, **kw)

    def systemctl(self, *args: str, check: bool = True, timeout: float | None = 120) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.rstrip("\n")

    def is_active(self, unit: str) -> str:
        return self.run(["systemctl", "is-active", unit], check=False).stdout.strip()

    def journal(self, unit: str | None = None, since: str | None = None, lines: int | None = None,
                output: str = "short-monotonic") -> str:
        cmd = ["journalctl", "--no-pager", "-b", "-o", output]
        if unit:
            cmd += ["-u", unit]
        if since:
            cmd += ["--since", since]
        if lines:
            cmd += ["-n", str(lines)]
        return self.run(cmd, check=False).stdout

    # ---- files (streamed through tar/cat inside, so symlinks resolve in the guest)

    def write(self, guest_path: str, text: str | bytes, mode: int = 0o644, owner: str | None = None) -> None:
        data = text.encode() if isinstance(text, str) else text
        quoted = shlex.quote(guest_path)
        script = f"mkdir -p \"$(dirname {quoted})\" && cat > {quoted} && chmod {mode:o} {quoted}"
        if owner:
            script += f" && chown {shlex.quote(owner)} {quoted}"
        self.run(["sh", "-c", script], input=data)

    def read(self, guest_path: str) -> str:
        return self.run(["cat", guest_path]).stdout

    def read_bytes(self, guest_path: str) -> bytes:
        return self.run(["cat", guest_path], text=False).stdout

    def exists(self, guest_path: str) -> bool:
        return self.run(["test", "-e", guest_path], check=False).returncode == 0

    def copy_in(self, host_path: str | os.PathLike, guest_path: str, timeout: float = 300) -> None:
        """Copy a host file or directory to guest_path (created/replaced), streamed through tar.

        For large read-only trees (wheelhouses) a bind mount (``binds=``) is cheaper.
        """
        host_path = Path(host_path)
        if not host_path.exists():
            raise FileNotFoundError(host_path)
        quoted = shlex.quote(guest_path)
        if host_path.is_dir():
            src = ["tar", "-C", str(host_path), "-cf", "-", "."]
            script = f"mkdir -p {quoted} && tar -C {quoted} --no-same-owner -xf -"
        else:
            src = ["tar", "-C", str(host_path.parent), "--transform", "s,.*,f,", "-cf", "-", host_path.name]
            tmpdir = "/tmp/.copy_in." + uuid.uuid4().hex[:8]
            script = (f"mkdir -p {tmpdir} \"$(dirname {quoted})\" && tar -C {tmpdir} -xf - && "
                      f"mv -f {tmpdir}/f {quoted}; rc=$?; rm -rf {tmpdir}; exit $rc")
        producer = subprocess.Popen(src, stdout=subprocess.PIPE)
        try:
            r = subprocess.run(self._nsenter(["sh", "-c", script]), stdin=producer.stdout,
                               capture_output=True, text=True, timeout=timeout, check=False)
        finally:
            producer.stdout.close()
            producer.wait(timeout=30)
        if r.returncode != 0 or producer.returncode != 0:
            raise ContainerError(f"copy_in {host_path} -> {guest_path} failed: {r.stderr[-2000:]}")

    def copy_out(self, guest_path: str, host_path: str | os.PathLike) -> None:
        Path(host_path).write_bytes(self.read_bytes(guest_path))

    # ---- conveniences for localaid tests

    def wait_for_unit(self, unit: str, state: str = "active", timeout: float = 60.0) -> None:
        try:
            wait_for(lambda: self.is_active(unit) == state, timeout=timeout, interval=0.25,
                     message=f"{unit} to be {state}")
        except TimeoutError as exc:
            status = self.systemctl("status", unit, check=False).stdout
            raise ContainerError(f"{unit} is {self.is_active(unit)}, wanted {state}\n{status}\n"
                                 f"{self.journal(unit, lines=80)}") from exc

    def apt_install(self, *packages: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", *packages],
                        timeout=timeout)


def free_port() -> int:
    """A port free on this machine now: containers share the host's network unless private."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def standin_unit(port: int, docroot: str = "/usr/share/doc", description: str = "stand-in service",
                 extra: str = "") -> str:
    """A unit serving files over HTTP on 127.0.0.1:port: a supervised service for tests whose
    subject is localaid's supervision, not the service."""
    return (f"[Unit]\nDescription={description} on {port}\n[Service]\n"
            f"ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 {port} --directory {docroot}\n"
            f"Restart=always\n{extra}")



# A unit behind the name ollama.service that binds no port (containers may share the host's
# network, and other runs may use 11434): something to supervise, or to see not restarted.
SLEEPING_OLLAMA_UNIT = """\
[Unit]
Description=stand-in ollama
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


# What Ollama's install script writes (tests/fakes/ollama/install.sh.in, the real one alike).
SCRIPT_OLLAMA_UNIT = """\
[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/usr/local/bin/ollama serve
User=ollama
Group=ollama
Restart=always
RestartSec=3
Environment="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

[Install]
WantedBy=default.target
"""


def install_fake_ollama(c: Container, version: str = "0.9.0", faults: dict | None = None) -> None:
    """Ollama as its install script leaves it, before localaid comes: the fake binary and its
    modules under /usr/local (tests/fakes/ollama/release.py), user ollama with its home and the
    default models dir, the script's unit, enabled and answering. localaid's set-up job then
    finds it installed, writes its drop-in and pulls. `faults`: the fake's switches
    (/run/fake-ollama/faults.json), e.g. {"pull_rate": bytes_per_s}."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes" / "ollama"))
    import release
    c.write("/usr/local/bin/ollama", release.fake_binary(version), mode=0o755)
    for name, data in release.fake_libs().items():
        c.write(f"/usr/local/lib/ollama/{name}", data)
    c.run(["useradd", "-r", "-s", "/bin/false", "-U", "-m", "-d", "/usr/share/ollama", "ollama"])
    c.write("/run/fake-ollama/faults.json", json.dumps(faults or {}))
    c.write("/etc/systemd/system/ollama.service", SCRIPT_OLLAMA_UNIT)
    c.systemctl("daemon-reload")
    c.systemctl("enable", "--now", "ollama.service")
    wait_for(lambda: c.run(["curl", "-sf", "-m", "1", "http://127.0.0.1:11434/api/version"],
                           check=False).returncode == 0, timeout=30, message="the fake Ollama answering")
