"""Test helpers for the fake NVML library: build it, find the real nvidia-ml-py, load both.

    from tests.fakes.nvml import support
    lib = support.build(tmp_dir)           # gcc → tmp_dir/libnvidia-ml.so.1 (wsl=True: WSL2's)
    pynvml_dir = support.pynvml_dir(tmp)   # a directory holding nvidia-ml-py's pynvml.py
    support.write_state(path, count=1, lost=False, xids=[79], ...)
    support.fake_dev(dev_dir, count=1)     # nvidiactl, nvidia0 as plain files, for FAKE_NVML_DEV

The library opens the device nodes as the real one does ($FAKE_NVML_DEV, default /dev): outside a
test container, point FAKE_NVML_DEV at a directory made by fake_dev().

nvidia-ml-py is never copied into the repository: it comes from the system, from vendor/ (put
there by tools/build-deb), from the wheel tools/build-deb caches, or is downloaded with pip
(`pip download --no-deps nvidia-ml-py`, from the index pip is configured with).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
BUILD = HERE / "build"
WHEEL_CACHE = "/var/cache/localaid-build"


def build(outdir: str | os.PathLike, wsl: bool = False) -> Path:
    """The library in `outdir`; wsl: WSL2's (through /dev/dxg, part of the API)."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build the fake NVML library (tools/setup-host installs it)")
    out = subprocess.run([str(BUILD), str(outdir)] + (["--wsl"] if wsl else []), check=True, capture_output=True,
                         text=True).stdout
    return Path(out.strip().splitlines()[-1])


def pynvml_dir(tmp: str | os.PathLike) -> Path:
    """A directory to put on sys.path for `import pynvml` (the real nvidia-ml-py)."""
    spec = importlib.util.find_spec("pynvml")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    if (REPO / "vendor" / "pynvml.py").is_file():
        return REPO / "vendor"
    wheels = sorted(glob.glob(os.path.join(WHEEL_CACHE, "nvidia_ml_py-*.whl")))
    tmp = Path(tmp)
    if not wheels:
        dl = tmp / "wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", str(dl), "nvidia-ml-py"], check=True)
        wheels = sorted(glob.glob(str(dl / "nvidia_ml_py-*.whl")))
    with zipfile.ZipFile(wheels[-1]) as z:
        (tmp / "pynvml.py").write_bytes(z.read("pynvml.py"))
    return tmp


def load(tmp: str | os.PathLike) -> tuple[Path, Path]:
    """Build the fake library into `tmp`, load it under its soname (so pynvml's
    CDLL("libnvidia-ml.so.1") finds it) and put the pynvml it pairs with on sys.path.
    Returns (library, pynvml's directory); raises RuntimeError or CalledProcessError when it
    cannot be built."""
    import ctypes
    lib = build(Path(tmp) / "lib")
    pydir = pynvml_dir(tmp)
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    if str(pydir) not in sys.path:
        sys.path.append(str(pydir))
    return lib, pydir


def write_state(path: str | os.PathLike, **state) -> None:
    """Atomically (re)write the fake's state file (see fake_nvml.c for the keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def fake_dev(directory: str | os.PathLike, count: int = 1) -> Path:
    """A directory of plain files named as the NVIDIA nodes NVML opens (nvidiactl, nvidia0..N-1):
    FAKE_NVML_DEV for a process outside a container, where no /dev/nvidia* exist. A file made
    unreadable (chmod 0) then answers as a node the user may not open: NO_PERMISSION."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in ["nvidiactl"] + [f"nvidia{i}" for i in range(count)]:
        (d / name).touch()
    return d
