"""What the container benchmarks share: the .deb and root file system to test, and the table."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/integration"))


def _tool(*argv: str) -> Path:
    r = subprocess.run([str(REPO / "tools" / argv[0]), *argv[1:]], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tools/{argv[0]} failed:\n{r.stderr[-3000:]}")
    return Path(r.stdout.split()[-1])


def deb_and_rootfs(deb: Path | None = None, rootfs: Path | None = None, suite: str = "bookworm") -> tuple[Path, Path]:
    """The given paths, or a fresh tools/build-deb and the cached tools/build-rootfs."""
    deb = (deb or _tool("build-deb", "--no-lintian")).resolve()
    rootfs = rootfs or _tool("build-rootfs", "--suite", suite)
    return deb, rootfs


# The fake Ollama (tests/fakes/ollama, bound at /opt/fakes/ollama) as ollama.service.
OLLAMA_UNIT = """\
[Service]
ExecStart=/usr/bin/python3 /opt/fakes/ollama/ollama serve
Environment=OLLAMA_MODELS=/var/lib/fake-ollama/models
Restart=always
RestartSec=3
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wheelhouse() -> Path:
    """The fake open-webui's wheelhouse (tests/fakes/open_webui/build-wheelhouse)."""
    r = subprocess.run(["/usr/bin/python3", str(REPO / "tests/fakes/open_webui/build-wheelhouse")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build-wheelhouse failed:\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(title)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def install_with_standins(c, deb: Path, config: str, driver: str) -> None:
    """Install the .deb over stand-in services already running, with `config` and the in-container
    driver script at /root/driver.py; return once localaid reports Open WebUI ok."""
    from harness import wait_for
    c.write("/etc/localaid/localaid.yaml", config)
    c.write("/root/driver.py", driver)
    c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold", f"/mnt/{deb.name}"],
          timeout=600)
    wait_for(lambda: "open-webui ok" in c.unit_property("localaid", "StatusText"), timeout=60)


def deb_of_ref(ref: str) -> Path:
    """The .deb of git `ref` (a commit, tag, HEAD~1 ...), for side-by-side runs against an earlier
    build: tools/build-deb in a temporary `git worktree` of this clone, removed afterwards. The
    .deb is kept as out/baseline/<commit>/<name> and reused while that commit's file is there."""
    import shutil
    import tempfile
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "--verify", ref + "^{commit}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"not a commit: {ref}: {r.stderr.strip()}")
    commit = r.stdout.strip()
    keep = REPO / "out" / "baseline" / commit
    found = sorted(keep.glob("localaid_*.deb")) if keep.is_dir() else []
    if found:
        return found[-1]
    tmp = Path(tempfile.mkdtemp(prefix="localaid-ref-"))
    tree = tmp / "tree"
    try:
        r = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"git worktree add {commit} failed:\n{r.stderr[-2000:]}")
        r = subprocess.run([str(tree / "tools/build-deb"), "--no-lintian"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"tools/build-deb of {commit} failed:\n{r.stderr[-3000:]}")
        built = Path(r.stdout.split()[-1])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, keep / built.name)
        return keep / built.name
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
