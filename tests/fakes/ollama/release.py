"""Build fake Ollama release archives: ollama-linux-<arch>.tar.zst as the real ones are laid out.

    bin/ollama                       the fake server (tests/fakes/ollama/ollama) with VERSION set
    lib/ollama/libggml-base.so       stand-ins for the bundled libraries
    lib/ollama/cuda_v12/libggml-cuda.so

The install script unpacks it into /usr/local. Compression uses the `zstd` command (as the
script's own extraction does), so the host needs zstd.
"""

from __future__ import annotations

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
        add_file("lib/ollama/libggml-base.so", f"fake ggml base {version}\n".encode() * 512)
        add_file("lib/ollama/cuda_v12/libggml-cuda.so", f"fake ggml cuda {version}\n".encode() * 512)
    return buf.getvalue()


def build_archive(version: str) -> bytes:
    """The .tar.zst bytes for `version`."""
    r = subprocess.run(["zstd", "-q", "-c", "-3"], input=build_tar(version), capture_output=True, check=True)
    return r.stdout


def write_archive(version: str, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(build_archive(version))
    return path
