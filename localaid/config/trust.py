"""Who may change the configuration: sshd's StrictModes, for files localaid reads as root.

localaid runs as root and acts on its configuration as root (it downloads and runs the Ollama
installer the configuration names, writes units, chowns directories).  A configuration file that
another user can change is therefore a way to become root, so when the loader runs as root it
refuses (as a problem of that file: load() fails, though the file's content is still checked so
that every problem is reported at once):

- a configuration file owned by anyone but root, or writable by its group or by every user;
- the same for the directory holding it (a writable directory lets its files be replaced) and,
  further up, for every directory above it, which may however be world-writable when it has the
  sticky bit (as /tmp has): there nobody can rename or replace what root owns. conf.d itself,
  all of whose files are read, may not be writable by others even with the sticky bit.

Each refusal names the file or directory and the command that fixes it (``chmod go-w PATH``,
``chown root: PATH``).  conf.d is checked only when it holds a *.yaml file to read.  Run as
another user (``localaid config check`` without sudo) nothing is checked: such a run acts on
nothing as root.  ``trusted_uid`` names an owner to trust besides root (for tests), or None for
no checks at all.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator

# load(trusted_uid=AUTO): check for root's sake when running as root, else not at all.
AUTO = -1


def resolve(trusted_uid: int | None) -> int | None:
    """The uid trusted besides root, or None for "no checks"."""
    if trusted_uid == AUTO:
        return 0 if os.geteuid() == 0 else None
    return trusted_uid


def _owner(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _why(st: os.stat_result, trusted: int, sticky_ok: bool) -> tuple[list[str], list[str]]:
    """→ (what is wrong, the commands that fix it with "{}" for the path)."""
    wrong, fixes = [], []
    if st.st_uid not in (0, trusted):
        wrong.append(f"owned by {_owner(st.st_uid)}, not root")
        fixes.append("chown root: {}")
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "every user"}.get(writable, "its group and every user")
        wrong.append(f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append("chmod go-w {}")
    return wrong, fixes


def _reason(wrong: list[str], fixes: list[str], path: str, subject: str = "") -> str:
    fix = " && ".join(f.format(path) for f in fixes)
    return (f"refused: {subject}{' and '.join(wrong)}; localaid acts as root on its configuration, "
            f"so no one but root may be able to change it (fix: {fix})")


def file_problem(path: str, st: os.stat_result, trusted: int) -> str | None:
    """The reason to refuse the file itself (st: its fstat), or None."""
    wrong, fixes = _why(st, trusted, sticky_ok=False)
    return _reason(wrong, fixes, path) if wrong else None


def _up(directory: str) -> Iterator[str]:
    while True:
        yield directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent


def dir_problems(directory: str, trusted: int, seen: set[tuple[int, int]], itself: bool = False,
                 sticky_here: bool = False) -> list[str]:
    """Reasons to refuse what ``directory`` holds: it, and every directory above it, checked both
    as named and with symbolic links resolved.  A directory already in ``seen`` (device, inode) is
    not reported again: one load reports /etc/localaid once, not for each file.  itself=True words
    the first reason for the directory being loaded (conf.d) rather than for a file in it.
    sticky_here=True also accepts a sticky ``directory`` itself (the holder of one named file: in
    /tmp nobody but root can replace root's file; conf.d, whose every file is read, never)."""
    out = []
    for start in dict.fromkeys((os.path.abspath(directory), os.path.realpath(directory))):
        for i, d in enumerate(_up(start)):
            try:
                st = os.stat(d)
            except OSError:
                continue                   # a missing directory holds nothing to worry about
            wrong, fixes = _why(st, trusted, sticky_ok=i > 0 or sticky_here)
            if wrong and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                subject = "" if itself and i == 0 else f"directory {d} is "
                out.append(_reason(wrong, fixes, d, subject))
    return out


def symlink_reason(path: str) -> str:
    """conf.d takes regular files only; why is in the loader's docstring."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (f"is a symbolic link (to {target}); conf.d takes regular files only, "
            f"so that what is read is what `ls -l` there shows: copy the file there instead")


def holder_problems(path: str, trusted: int, seen: set[tuple[int, int]]) -> list[str]:
    """dir_problems() for the directory holding ``path``, and for the one holding the file it
    links to when it is a symbolic link (the main file may be one)."""
    out = []
    for d in dict.fromkeys((os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path)))):
        out += dir_problems(d, trusted, seen, sticky_here=True)
    return out
