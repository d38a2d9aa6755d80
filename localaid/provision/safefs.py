"""File operations root may do inside a directory a service user controls, never through a link.

Open WebUI's data directory and the venvs handed to it belong to the service user, who runs
code by design. Whatever root opens, writes, renames or changes there goes through a file
descriptor of the directory (opened O_DIRECTORY|O_NOFOLLOW) and names one entry of it (openat,
renameat, unlinkat, fchown): a symbolic link the user planted is never followed, a FIFO never
blocks, a temporary name is created with O_EXCL, and modes and owners are fixed by the caller,
never copied from what the user could have placed there.

The directory itself must be a real directory (a link there is refused): its parent is root's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
from typing import Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


class UnsafeFile(OSError):
    """An entry that is not what root may use: a link, a FIFO, a directory, a planted hard link."""


@contextlib.contextmanager
def directory(path: str) -> Iterator[int]:
    """A file descriptor of the directory `path` (ELOOP when `path` itself is a link)."""
    try:
        fd = os.open(path, DIR_FLAGS)
    except NotADirectoryError:
        if os.path.islink(path):  # O_NOFOLLOW|O_DIRECTORY on a link says ENOTDIR
            raise UnsafeFile(errno.ELOOP, "is a symbolic link", path) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def open_file(dfd: int, name: str, owner: int | None = None) -> int:
    """`name` in `dfd` opened to read. A link, a FIFO or anything but a regular file raises
    UnsafeFile; so does, with `owner`, a file of someone else that has other hard links (the user
    may link in a file it could not read, e.g. /etc/shadow when protected_hardlinks is off)."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, "is a symbolic link", name) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile(errno.EINVAL, "is not a regular file", name)
    if owner is not None and st.st_uid != owner and st.st_nlink > 1:
        os.close(fd)
        raise UnsafeFile(errno.EPERM, "is a hard link to a file of another user", name)
    return fd


def size(dfd: int, name: str) -> int | None:
    """The size of the regular file `name` (lstat), None when it is missing or not a file."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def digest(dfd: int, name: str, owner: int | None = None) -> str | None:
    """sha256 of the regular file `name`; None when it is missing, a link or not a file."""
    try:
        fd = open_file(dfd, name, owner)
    except (FileNotFoundError, UnsafeFile):
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def read(path: str, limit: int = 1 << 20) -> bytes | None:
    """A small regular file whose own name may be a link someone planted (a marker in a venv
    the service user owns): None when missing, a link or not a regular file."""
    with contextlib.suppress(OSError):
        with directory(os.path.dirname(path) or ".") as dfd:
            fd = open_file(dfd, os.path.basename(path))
            with os.fdopen(fd, "rb") as f:
                return f.read(limit)
    return None


def tmp_name(name: str) -> str:
    """The temporary name under which `name` is written before its rename."""
    return f".{name}.localaid-tmp"


def _create_tmp(dfd: int, name: str, mode: int) -> tuple[int, str]:
    """A new file next to `name`, created with O_EXCL: a name someone squats (a link, a file) is
    removed (unlinkat never follows) and tried again; then a random name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    tmp = tmp_name(name)
    for attempt in range(4):
        try:
            return os.open(tmp, flags, mode, dir_fd=dfd), tmp
        except FileExistsError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            if attempt >= 1:
                tmp = tmp_name(f"{name}.{secrets.token_hex(6)}")
    raise UnsafeFile(errno.EEXIST, "cannot create a temporary file next to it", name)


def stage(dfd: int, name: str, source: int | bytes, mode: int, uid: int = -1, gid: int = -1) -> str:
    """`source` (bytes, or a file descriptor read from where it stands) in a fresh temporary
    file next to `name`, its mode and owner set on the descriptor, fsync'ed; the temporary's
    name, for the caller to rename (write() does; a caller replacing two files together stages
    both first)."""
    fd, tmp = _create_tmp(dfd, name, mode)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                with os.fdopen(os.dup(source), "rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(fd)
    return tmp


def write(dfd: int, name: str, source: int | bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Replace `name` in `dfd` atomically with `source`: stage() it, renameat over `name` (a link
    there is replaced, not followed), fsync of the directory."""
    tmp = stage(dfd, name, source, mode, uid, gid)
    try:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    os.fsync(dfd)


def unlink(dfd: int, name: str) -> None:
    """Remove the entry `name` (a link itself, never its target); nothing when it is missing."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)


def ensure_dir(path: str, mode: int, uid: int, gid: int) -> None:
    """`path` exists as a real directory with this owner and mode (set on its descriptor)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    with directory(path) as fd:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)


def open_dirs(top_fd: int, rel_dir: str, mode: int = 0o700, uid: int = -1, gid: int = -1) -> int:
    """A descriptor of `rel_dir` below `top_fd`: each level opened without following a link, or
    made with `mode` (and, with `uid`/`gid`, given to them) when missing."""
    fd = os.dup(top_fd)
    for part in [p for p in rel_dir.split("/") if p and p != "."]:
        try:
            os.mkdir(part, mode, dir_fd=fd)
            made = True
        except FileExistsError:
            made = False
        try:
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nfd
        if made and (uid != -1 or gid != -1):
            os.fchown(fd, uid, gid)
    return fd


def tree_size(path: str) -> int:
    """Disk use of the files below `path`, hard links counted once, links never followed."""
    total, seen = 0, set()
    with contextlib.suppress(OSError):
        for _dir, _subdirs, files, dfd in os.fwalk(path, follow_symlinks=False):
            for name in files:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def remove_tree(path: str) -> None:
    """Remove `path` and everything below it without following a link; a mount point (a tmpfs,
    say) stays and loses its contents. Best effort, as `rm -rf`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    if not os.path.ismount(path):
        shutil.rmtree(path, ignore_errors=True)  # descriptor-based on Linux: links not followed
        return
    with contextlib.suppress(OSError), directory(path) as dfd:
        for name in os.listdir(dfd):
            try:
                entry = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(entry.st_mode):
                shutil.rmtree(name, ignore_errors=True, dir_fd=dfd)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dfd)


def copy_tree(src: str, dst: str) -> int:
    """Copy the tree `src` (a service user's) to the new directory `dst` as root's own, never
    through a link: directories 0755, files with their mode less set-id bits and group/other
    write, symbolic links only when relative and pointing inside the tree. Anything else
    (a device, a FIFO, a link out of the tree) raises UnsafeFile. The number of files copied."""
    n = 0
    os.mkdir(dst, 0o755)
    for top, dirs, files, dfd in os.fwalk(src, follow_symlinks=False):
        rel = os.path.relpath(top, src)
        out = os.path.normpath(os.path.join(dst, rel))
        with directory(out) as odfd:
            for name in dirs:
                if os.path.islink(os.path.join(top, name)):  # fwalk lists links to dirs here
                    _copy_link(dfd, name, rel, odfd)
                else:
                    os.mkdir(name, 0o755, dir_fd=odfd)
            for name in files:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    _copy_link(dfd, name, rel, odfd)
                elif stat.S_ISREG(st.st_mode):
                    _copy_file(dfd, name, odfd, stat.S_IMODE(st.st_mode) & 0o755)
                    n += 1
                else:
                    raise UnsafeFile(errno.EINVAL, "not a regular file, directory or link", os.path.join(top, name))
    return n


def _copy_file(dfd: int, name: str, odfd: int, mode: int) -> None:
    """One file into root's new tree (nobody else can write there: no temporary name needed;
    the caller syncs once at the end)."""
    src = os.open(name, READ_FLAGS, dir_fd=dfd)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):  # swapped since it was listed
            raise UnsafeFile(errno.EINVAL, "not a regular file", name)
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=odfd)
        try:
            with os.fdopen(os.dup(src), "rb") as fin, os.fdopen(os.dup(out), "wb") as fout:
                shutil.copyfileobj(fin, fout, CHUNK)
            os.fchmod(out, mode)
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_link(dfd: int, name: str, rel: str, odfd: int) -> None:
    target = os.readlink(name, dir_fd=dfd)
    inside = os.path.normpath(os.path.join(rel, target))
    if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
        raise UnsafeFile(errno.EXDEV, f"a link out of the tree ({target})", os.path.join(rel, name))
    os.symlink(target, name, dir_fd=odfd)
