"""Build fake Ollama release archives: ollama-linux-<arch>.tar.zst (or .tgz, what releases before
the switch to zstd had) as the real ones are laid out.

    bin/ollama                       the fake server (tests/fakes/ollama/ollama) with VERSION set
    lib/ollama/fake_ollama_*.py      its modules, where the real release keeps its libraries
    lib/ollama/libggml-base.so       stand-ins for the bundled libraries
    lib/ollama/cuda_v12/libggml-cuda.so

The install script unpacks it into /usr/local. Compression uses the `zstd` command (as the
script's own extraction does), so the host needs zstd; .tgz uses gzip from the standard library.
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_BINARY = HERE / "ollama"


def fake_binary(version: str) -> bytes:
    text = FAKE_BINARY.read_text()
    text, n = re.subn(r'^VERSION = "[^"]*"', f'VERSION = "{version}"', text, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"no VERSION line in {FAKE_BINARY}")
    return text.encode()


def fake_libs() -> dict[str, bytes]:
    """The fake server's modules, by file name (lib/ollama/ in a release)."""
    names = re.search(r"^LIBS = \(([^)]*)\)", FAKE_BINARY.read_text(), re.M).group(1)
    return {n: (HERE / n).read_bytes() for n in re.findall(r'"([^"]+)"', names)}


def build_tar(version: str) -> bytes:
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add_dir(name):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(info)

        def add_file(name, data, mode=0o644):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "lib", "lib/ollama", "lib/ollama/cuda_v12"):
            add_dir(d)
        add_file("bin/ollama", fake_binary(version), 0o755)
        for name, data in fake_libs().items():
            add_file(f"lib/ollama/{name}", data)
        add_file("lib/ollama/libggml-base.so", f"fake ggml base {version}\n".encode() * 512)
        add_file("lib/ollama/cuda_v12/libggml-cuda.so", f"fake ggml cuda {version}\n".encode() * 512)
    return buf.getvalue()


def build_archive(version: str, fmt: str = "zst") -> bytes:
    """The .tar.zst (fmt "zst") or .tgz (fmt "tgz") bytes for `version`."""
    if fmt == "tgz":
        return gzip.compress(build_tar(version), mtime=0)
    r = subprocess.run(["zstd", "-q", "-c", "-3"], input=build_tar(version), capture_output=True, check=True)
    return r.stdout


def write_archive(version: str, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(build_archive(version))
    return path
