"""Fixtures for integration tests that boot systemd in systemd-nspawn.

    def test_x(container):                 # module-scoped, booted, localaid .deb installed
        assert container.is_active("localaid") == "active"

    def test_y(make_container):            # function-scoped, torn down after the test
        c = make_container(install=True, config="health:\\n  interval: 1s\\n",
                           binds=[(FAKES_DIR, "/opt/fakes", True)])

Customise the module-scoped ``container`` of one test module by overriding
``container_options`` there:

    @pytest.fixture(scope="module")
    def container_options():
        return {"config": "...", "binds": [(str(FAKES), "/opt/fakes", True)], "setup": my_fn}

Options (both fixtures): install (bool), config (text written to
/etc/localaid/localaid.yaml *before* apt install), conf_d ({name: text} for
/etc/localaid/conf.d/), binds ([(host, guest, read_only)]), setup (callable
run with the booted container before install), plus Container() keywords.

Environment: LOCALAID_DEB=path skips building the .deb; LOCALAID_ROOTFS=path
skips building the rootfs; LOCALAID_SUITE=bookworm|trixie picks the rootfs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Container, ContainerError, reap_stale, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GUEST_DEB_DIR = "/mnt"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (they boot systemd-nspawn containers)"
    if shutil.which("systemd-nspawn") is None:
        return "integration tests need systemd-nspawn (run tools/setup-host)"
    return None


SKIP_REASON = _skip_reason()


def pytest_report_header(config):
    if SKIP_REASON:
        return f"localaid integration: SKIPPED: {SKIP_REASON}"
    return "localaid integration: systemd-nspawn containers enabled"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason=SKIP_REASON) if SKIP_REASON else None
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
            if skip:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# --------------------------------------------------------------------------- build steps

def _run_tool(argv: list[str], what: str) -> str:
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if not lines:
        pytest.fail(f"{what} printed no path:\n{r.stderr[-3000:]}")
    print(f"{what}: {lines[-1]} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return lines[-1].strip()


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """Path of the cached Debian root file system (tools/build-rootfs)."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    if os.environ.get("LOCALAID_ROOTFS"):
        return Path(os.environ["LOCALAID_ROOTFS"])
    suite = os.environ.get("LOCALAID_SUITE", "bookworm")
    reap_stale()
    return Path(_run_tool([str(REPO / "tools/build-rootfs"), "--suite", suite], "build-rootfs"))


@pytest.fixture(scope="session")
def deb() -> Path:
    """Path of a freshly built localaid_<version>_all.deb (tools/build-deb, once per session)."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    if os.environ.get("LOCALAID_DEB"):
        path = Path(os.environ["LOCALAID_DEB"]).resolve()
    else:
        path = Path(_run_tool([str(REPO / "tools/build-deb"), "--no-lintian"], "build-deb"))
    if not path.is_file():
        pytest.fail(f"no .deb at {path}")
    return path


# --------------------------------------------------------------------------- containers

def guest_deb_path(deb: Path) -> str:
    return f"{GUEST_DEB_DIR}/{deb.name}"


def install_deb(c: Container, deb: Path, config: str | None = None,
                conf_d: dict[str, str] | None = None) -> float:
    """apt-get install the bound .deb inside ``c``; config/conf.d written first. Returns seconds."""
    if config is not None:
        c.write("/etc/localaid/localaid.yaml", config, mode=0o644)
    for name, text in (conf_d or {}).items():
        c.write(f"/etc/localaid/conf.d/{name}", text, mode=0o644)
    t0 = time.monotonic()
    # --force-confold: keep a pre-seeded /etc/localaid/localaid.yaml without prompting.
    c.run(["apt-get", "install", "-y", "-q",
           "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
           guest_deb_path(deb)], timeout=600)
    elapsed = time.monotonic() - t0
    c.timings["apt_install"] = elapsed
    return elapsed


def boot(rootfs: Path, deb: Path | None, *, install: bool = False, config: str | None = None,
         conf_d: dict[str, str] | None = None, binds=(), setup: Callable[[Container], None] | None = None,
         **kw) -> Container:
    """Boot a container (deb bound read-only at /mnt), optionally install localaid."""
    all_binds = list(binds)
    if deb is not None:
        all_binds.append((str(deb), guest_deb_path(deb), True))
    c = Container(rootfs, binds=all_binds, **kw)
    c.start()
    try:
        if setup:
            setup(c)
        if install:
            if deb is None:
                raise ValueError("install=True needs the deb fixture")
            install_deb(c, deb, config=config, conf_d=conf_d)
        elif config is not None or conf_d:
            if config is not None:
                c.write("/etc/localaid/localaid.yaml", config)
            for name, text in (conf_d or {}).items():
                c.write(f"/etc/localaid/conf.d/{name}", text)
    except BaseException:
        c.stop()
        raise
    return c


def _dump_on_failure(request, c: Container) -> None:
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and c.running and c.leader:
        try:
            print(f"\n===== journal of {c.name} (last 200 lines) =====\n{c.journal(lines=200)}")
        except Exception as exc:  # noqa: BLE001
            print(f"(journal unavailable: {exc})")


@pytest.fixture
def make_container(request, rootfs):
    """Factory: make_container(install=False, config=None, binds=(), name=..., ...) -> booted Container.

    Requests the ``deb`` fixture (building it) only when install=True is asked for.
    """
    made: list[Container] = []

    def factory(*, install: bool = False, with_deb: bool | None = None, **kw) -> Container:
        need_deb = install or bool(with_deb)
        deb = request.getfixturevalue("deb") if need_deb else None
        kw.setdefault("name", request.node.name)
        c = boot(rootfs, deb, install=install, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        _dump_on_failure(request, c)
        c.stop()


@pytest.fixture(scope="module")
def nvml_lib(tmp_path_factory):
    """The fake libnvidia-ml.so.1, built once per module for the GPU containers (gpu_box.py)."""
    from gpu_box import build_nvml
    try:
        return build_nvml(tmp_path_factory.mktemp("nvml"))
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def container_options() -> dict:
    """Override in a test module to customise its shared ``container``."""
    return {}


@pytest.fixture(scope="module")
def container(request, rootfs, deb, container_options):
    """One booted container per test module, with the localaid .deb installed."""
    opts = dict(container_options)
    opts.setdefault("install", True)
    opts.setdefault("name", Path(str(request.node.fspath)).stem)
    c = boot(rootfs, deb, **opts)
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _journal_of_shared_container_on_failure(request):
    yield
    if "container" in request.fixturenames:
        c = request.getfixturevalue("container")
        _dump_on_failure(request, c)


__all__ = ["Container", "ContainerError", "wait_for", "boot", "install_deb", "guest_deb_path"]


def _built(script: str, what: str) -> Path:
    r = subprocess.run(["/usr/bin/python3", str(REPO / script)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{what} failed:\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """The fake open-webui's wheels (two releases) and a uv wheel: tests/fakes/open_webui."""
    return _built("tests/fakes/open_webui/build-wheelhouse", "build-wheelhouse")


@pytest.fixture(scope="session")
def python_double() -> Path:
    """A CPython 3.11 archive and the downloads list uv reads instead of its own
    (tests/fakes/python): the stand-in for uv's interpreter download site. Bind it at the same
    path: the list names the archive by an absolute file:// URL."""
    return _built("tests/fakes/python/build-interpreter", "build-interpreter")
