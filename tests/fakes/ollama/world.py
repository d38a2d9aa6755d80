"""A host for localaid's Ollama jobs inside a temporary directory, for unit tests.

    w = World(tmp_path)                     # every path under tmp_path/root (localaid's Layout)
    w.install("0.9.0"); w.host.restart(UNIT)   # Ollama 0.9.0 unpacked, and serving
    config = w.config(version="0.9.1")       # ollama.install_script: w.script (a local file)
    provision(config, rep, w.host, w.layout)
    w.served()                              # the versions ollama.service ran, one per start
    w.script_runs()                         # the versions the install script installed
    w.close()                               # stops the service it started

The install script is a stand-in with the contract of install.sh.in (whole body in main(),
OLLAMA_VERSION pins the release, the library directory removed first, the binary replaced by a
new file as tar does) on the test's paths, without users or systemd. w.fault(...) makes it fail
after removing the libraries, or kill its caller (the job) with SIGKILL half-way.

FakeHost is localaid's Host with "systemd" played here: ollama.service is the fake `ollama
serve` (tests/fakes/ollama/ollama, as release.py builds it) started from the installed binary on
a free port, its PID in a state file, so that a second process (the run after a kill) finds it.
Processes, HTTP and the clock are real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import release  # noqa: E402

from localaid.config import Config, FrozenMap, ModelSpec, OllamaConfig  # noqa: E402
from localaid.provision.host import Host  # noqa: E402
from localaid.provision.ollama.layout import UNIT, Layout  # noqa: E402
from localaid.records import UnitState  # noqa: E402

VERSIONS = ("0.9.0", "0.9.1")
SCRIPT = """#!/bin/sh
# Test stand-in for Ollama's install script (tests/fakes/ollama/world.py): whole body in main(),
# OLLAMA_VERSION pins the release, the library directory is removed first and the binary
# replaced by a new file, as the real one does, on a test's paths.
main() {
set -eu
V="${OLLAMA_VERSION:-@LATEST@}"
echo ">>> Installing ollama $V"
echo "$V" >> "@RUNS@"
[ -d "@PAYLOAD@/$V" ] || { echo "ERROR: no release $V"; exit 1; }
rm -rf "@LIB@"
@FAULT@
mkdir -p "@LIB@"
cp "@PAYLOAD@/$V/lib/"* "@LIB@/"
cp "@PAYLOAD@/$V/ollama" "@BIN@.new"
mv "@BIN@.new" "@BIN@"
echo ">>> Install complete"
}

main
"""
FAULTS = {
    None: "",
    "fail": 'echo "ERROR: simulated installer failure"; exit 1',
    # SIGKILL for the job that runs the script ($PPID), a half-written binary left behind
    "kill": 'rm -f "@BIN@"; printf half > "@BIN@"; chmod 755 "@BIN@"; kill -KILL $PPID; exit 0',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeHost(Host):
    def __init__(self, world: "World"):
        super().__init__()
        self.w = world
        self.procs: dict[int, subprocess.Popen] = {}

    # ---- ollama.service
    def _state(self) -> dict:
        try:
            return json.loads(self.w.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def unit_state(self, unit: str) -> UnitState:
        st = self._state()
        pid = st.get("pid", 0)
        if unit == UNIT and pid and _alive(pid):
            return UnitState(UNIT, "loaded", "active", "running", main_pid=pid, active_enter_mono=st["since"])
        return UnitState(unit, "loaded", "inactive", "dead")

    def restart(self, unit: str) -> None:
        self.stop(unit)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.w.dir), "OLLAMA_HOST": f"127.0.0.1:{self.w.port}",
               "OLLAMA_MODELS": str(self.w.dir / "models"), "FAKE_OLLAMA_FAULTS": str(self.w.dir / "faults.json"),
               "FAKE_NVML_STATE": str(self.w.dir / "nvml.json")}
        since = self.monotonic()
        proc = subprocess.Popen([self.w.layout.bin, "serve"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs[proc.pid] = proc
        self.w.state_file.write_text(json.dumps({"pid": proc.pid, "since": since}))
        with open(self.w.dir / "served", "a") as f:
            f.write(self.w.binary_version() + "\n")

    start = restart

    def stop(self, unit: str, timeout: float = 10) -> None:
        pid = self._state().get("pid", 0)
        if unit != UNIT or not pid or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        proc = self.procs.pop(pid, None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None or not _alive(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def daemon_reload(self) -> None:
        pass

    def enable(self, unit: str) -> None:
        link = Path(self.w.layout.enabled_link)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(self.w.layout.unit_file)

    # ---- the rest of the machine
    def ids(self, name: str) -> tuple[int, int]:
        if name == "ollama":
            return self.w.owner
        return super().ids(name)

    def which(self, name: str) -> str | None:
        return "/usr/bin/" + name

    def free_bytes(self, path: str) -> int:
        return 100 << 30


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a child of a process that is gone may stay one for a while)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class World:
    def __init__(self, tmp_path: Path, owner: tuple[int, int] | None = None):
        self.dir = Path(tmp_path)
        self.layout = Layout(str(self.dir / "root"))
        self.owner = owner or (os.getuid(), os.getgid())
        self.port = free_port()
        self.state_file = self.dir / "service.json"
        self.runs_file = self.dir / "runs"
        self.script = self.dir / "install.sh"
        self.payload = self.dir / "payload"
        for v in VERSIONS:
            (self.payload / v / "lib").mkdir(parents=True)
            binary = self.payload / v / "ollama"
            binary.write_bytes(release.fake_binary(v))
            binary.chmod(0o755)
            (self.payload / v / "lib" / "libggml-base.so").write_text(f"fake ggml base {v}\n")
            for name, data in release.fake_libs().items():  # the server's modules, as a release has them
                (self.payload / v / "lib" / name).write_bytes(data)
        for d in (self.layout.bin, self.layout.lib, self.layout.unit_file):
            Path(d).parent.mkdir(parents=True, exist_ok=True)
        Path(self.layout.unit_file).write_text("[Service]\nExecStart=/usr/local/bin/ollama serve\n")
        self.fault(None)
        self.host = FakeHost(self)

    def fault(self, name: str | None) -> None:
        text = SCRIPT.replace("@FAULT@", FAULTS[name])
        for k, v in {"@LATEST@": VERSIONS[-1], "@RUNS@": self.runs_file, "@PAYLOAD@": self.payload,
                     "@LIB@": self.layout.lib, "@BIN@": self.layout.bin}.items():
            text = text.replace(k, str(v))
        self.script.write_text(text)

    def install(self, version: str) -> None:
        """Ollama `version` unpacked, as a finished install leaves it."""
        lib = Path(self.layout.lib)
        lib.mkdir(parents=True, exist_ok=True)
        for f in (self.payload / version / "lib").iterdir():
            (lib / f.name).write_bytes(f.read_bytes())
        Path(self.layout.bin).write_bytes((self.payload / version / "ollama").read_bytes())
        Path(self.layout.bin).chmod(0o755)

    def config(self, **ollama) -> Config:
        ollama.setdefault("install_script", str(self.script))
        ollama.setdefault("port", self.port)
        ollama.setdefault("install_timeout", 60.0)
        if "models" in ollama:
            ollama["models"] = tuple(ModelSpec(m if ":" in m else m + ":latest") for m in ollama["models"])
        if "environment" in ollama:
            ollama["environment"] = FrozenMap(ollama["environment"])
        return Config(ollama=OllamaConfig(**ollama))

    # ---- what happened
    def binary_version(self) -> str:
        try:
            m = re.search(rb'^VERSION = "([^"]*)"', Path(self.layout.bin).read_bytes(), re.M)
        except OSError:
            return "missing"
        return m.group(1).decode() if m else "broken"

    def lib_version(self) -> str:
        try:
            return (Path(self.layout.lib) / "libggml-base.so").read_text().split()[-1]
        except OSError:
            return "missing"

    def served(self) -> list[str]:
        try:
            return (self.dir / "served").read_text().split()
        except FileNotFoundError:
            return []

    def script_runs(self) -> list[str]:
        try:
            return self.runs_file.read_text().split()
        except FileNotFoundError:
            return []

    def close(self) -> None:
        self.host.stop(UNIT)
