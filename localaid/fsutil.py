"""Small file-system helpers shared by the daemon and the provisioning steps."""

from __future__ import annotations

import json
import os
import tempfile


def atomic_write(path: str, data: str | bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so readers see the old or the new content, never a mix.

    The temporary file lives in the same directory (same file system), is fsync'ed, gets its
    mode before the rename, and is removed if anything fails.
    """
    directory = os.path.dirname(path) or "."
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_if_changed(path: str, text: str, mode: int) -> bool:
    """Write `text` unless the file already holds it with `mode`; an empty text removes it."""
    try:
        with open(path) as f:
            same = f.read() == text
        if same and (os.stat(path).st_mode & 0o7777) == mode:
            return False
    except FileNotFoundError:
        if not text:
            return False
    if not text:
        os.unlink(path)
        return True
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    atomic_write(path, text, mode=mode)
    return True


def write_json(path: str, obj: object, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n", mode)


def read_json(path: str) -> object | None:
    """The parsed file, or None when it is missing or not (yet) valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
