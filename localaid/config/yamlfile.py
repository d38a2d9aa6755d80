"""The YAML layer: one file → a tree of Items that remember their file and line; merging; conf.d.

Each file is composed (not constructed) by PyYAML, so that duplicate keys can be seen and every
value keeps its line; nodes become Items, which are merged file over file and then walked against
the schema.  A mapping entry's Item carries the line of its key.

Nothing a file holds may crash the loader or make it hang; each of these is a problem of that
file (FILE[:LINE]: REASON) and the file's content is not used:

- not a regular file (a directory, a FIFO, a device), a symbolic link in conf.d, unreadable;
- more than MAX_BYTES (the read is bounded: a configuration is a few kB);
- bytes that are not UTF-8, control characters, YAML syntax errors, several documents;
- nesting deeper than MAX_DEPTH (PyYAML's composer recurses once per level: unbounded, a file of
  ``[[[[...`` ten thousand deep would end in RecursionError), or more than MAX_NODES values;
- aliases expanding to more than MAX_NODES values ("billion laughs": PyYAML composes an alias as
  the same node again, so the bomb is small in memory; it is the walk that must stop).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import yaml

import localaid.config.trust as trust
from localaid.config.values import Problem
from localaid.quantity import quote

MAX_BYTES = 1 << 20          # 1 MiB; the shipped, fully commented example is under 10 kB
MAX_DEPTH = 32               # the deepest key, ollama.models[i].name, is 4 levels down
MAX_NODES = 20_000           # values in one file, aliases expanded
MAX_KEY = 200                # characters in one key

TAG = "tag:yaml.org,2002:"
NULL, BOOL, INT, FLOAT, STR = (TAG + t for t in ("null", "bool", "int", "float", "str"))
DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")


@dataclass(eq=False, slots=True)
class Item:
    kind: str                    # "map", "seq" or "scalar"
    file: str
    line: int
    value: Any                   # dict[str, Item], list[Item], or the scalar's text as written
    tag: str = ""

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.tag == NULL


def show(item: Item) -> str:
    """How a value is shown in a message: "a mapping", "a list", null, 5, true, "text"."""
    if item.kind == "map":
        return "a mapping"
    if item.kind == "seq":
        return "a list"
    if item.tag == NULL:
        return "null"
    if item.tag in (INT, FLOAT):
        return item.value if len(item.value) <= 60 else item.value[:57] + "..."
    if item.tag == BOOL and item.value.lower() in ("true", "false"):
        return item.value
    return quote(item.value)


def pyvalue(item: Item) -> Any:
    """A scalar as the Python value a parse_* function should see (for its "got ..." message)."""
    if item.tag == INT and DECIMAL.fullmatch(item.value) and len(item.value) < 1000:
        return int(item.value)           # (longer: past Python's int-from-text limit; left as text)
    if item.tag == FLOAT:
        try:
            return float(item.value)
        except ValueError:
            pass
    if item.tag == BOOL and item.value.lower() in ("true", "false"):
        return item.value.lower() == "true"
    return item.value


# ------------------------------------------------------------------------------- composing

class _Abort(Exception):
    """The file is refused as a whole: (line or None, reason)."""


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep; a localaid configuration is at most 4 levels deep"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH levels and MAX_NODES nodes (PyYAML's scanner
    and parser keep their state in lists; only the composer recurses)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        self.nodes += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Abort(self.peek_event().start_mark.line + 1, _too_deep())
            if self.nodes > MAX_NODES:
                raise _Abort(self.peek_event().start_mark.line + 1,
                             f"more than {MAX_NODES} YAML values; a localaid configuration has a few hundred")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> yaml.Node | None:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _syntax_reason(e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    reason = f"YAML syntax error: {e.problem or e.context}"
    if e.problem == "but found another document":
        reason = 'YAML syntax error: a second document ("---"); the file must hold one mapping'
    elif e.context and e.problem and e.context_mark and mark and e.context_mark.line != mark.line:
        reason += f" ({e.context} at line {e.context_mark.line + 1})"
    if "'\\t'" in reason:
        reason += "; YAML does not allow tabs for indentation"
    return reason


def _to_items(node: yaml.Node, file: str, problems: list[Problem]) -> Item:
    budget = [MAX_NODES]         # alias expansion guard ("billion laughs")
    active: set[int] = set()     # recursive aliases

    def convert(node: yaml.Node, key: str, line: int, depth: int) -> Item:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Abort(None, "too many YAML nodes (alias expansion?)")
        if depth > MAX_DEPTH:    # aliases nested in aliases: deeper than the composer saw
            raise _Abort(line, _too_deep() + " (through aliases)")
        if isinstance(node, yaml.ScalarNode):
            known = node.tag in (NULL, BOOL, INT, FLOAT, STR)
            return Item("scalar", file, line, node.value, node.tag if known else STR)
        if id(node) in active:
            problems.append(Problem(file, line, key or None, "recursive YAML alias"))
            return Item("scalar", file, line, "", NULL)
        active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return Item("seq", file, line, [convert(v, f"{key}[{i}]", v.start_mark.line + 1, depth + 1)
                                                for i, v in enumerate(node.value)])
            out: dict[str, Item] = {}
            first: dict[str, int] = {}
            for knode, vnode in node.value:
                kline = knode.start_mark.line + 1
                if not isinstance(knode, yaml.ScalarNode):
                    problems.append(Problem(file, kline, key or None,
                                            "keys must be plain names, not lists or mappings"))
                    continue
                if len(knode.value) > MAX_KEY:
                    problems.append(Problem(file, kline, key or None, f"key {quote(knode.value)} is "
                                            f"longer than {MAX_KEY} characters"))
                    continue
                path = f"{key}.{knode.value}" if key else knode.value
                if knode.tag == TAG + "merge":
                    problems.append(Problem(file, kline, path,
                                            "YAML merge keys are not supported; write the keys out"))
                    continue
                if knode.value in first:
                    problems.append(Problem(file, kline, path,
                                            f"duplicate key (first set at line {first[knode.value]})"))
                else:
                    first[knode.value] = kline
                out[knode.value] = convert(vnode, path, kline, depth + 1)
            return Item("map", file, line, out)
        finally:
            active.discard(id(node))

    return convert(node, "", node.start_mark.line + 1, 1)


def parse(text: str, path: str, problems: list[Problem]) -> tuple[bool, Item | None]:
    """YAML text → (it was valid, its top-level Item or None when empty); problems appended."""
    text = text.removeprefix("\ufeff")
    try:
        node = _compose(text)
        if node is None:
            return True, None
        item = _to_items(node, path, problems)
    except _Abort as e:
        line, reason = e.args
        problems.append(Problem(path, line, None, reason))
        return False, None
    except RecursionError:       # only if called with most of the stack already used
        problems.append(Problem(path, None, None, _too_deep()))
        return False, None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problems.append(Problem(path, mark.line + 1 if mark else None, None, _syntax_reason(e)))
        return False, None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        problems.append(Problem(path, line, None,
                                f"control character #x{e.character:04x} is not allowed in YAML"))
        return False, None
    except yaml.YAMLError as e:      # pragma: no cover - every PyYAML parse error is one of the above
        problems.append(Problem(path, None, None, f"YAML error: {e}"))
        return False, None
    return True, None if item.is_null else item


# --------------------------------------------------------------------------------- reading

def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _open(path: str, follow: bool, problems: list[Problem], missing_ok: bool) -> int | None:
    """A read-only descriptor of the regular file at path, or None with the problem appended.
    Looked at before it is opened, so that a FIFO or a device is never opened at all."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            problems.append(Problem(path, None, None, trust.symlink_reason(path)))
            return None
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(path, None, None, f"is {_kind(st.st_mode)}, expected a YAML file"))
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
                     | (0 if follow else os.O_NOFOLLOW))
    except FileNotFoundError:
        if not missing_ok:
            problems.append(Problem(path, None, None, "cannot read: no such file"))
        return None
    except PermissionError as e:
        problems.append(Problem(path, None, None, f"cannot read: {e.strerror} (are you root?)"))
        return None
    except OSError as e:                  # ELOOP: swapped for a link between lstat and open
        problems.append(Problem(path, None, None, f"cannot read: {e.strerror or e}"))
        return None
    return fd


def read(path: str, problems: list[Problem], *, missing_ok: bool, follow: bool = True,
         trusted: int | None = None, seen: set[tuple[int, int]] | None = None) -> tuple[bool, Item | None]:
    """→ (file was read and may be used, its top-level Item or None when empty or unreadable).

    follow=False refuses a symbolic link (conf.d entries: the caller checks their directory).
    trusted: check ownership and modes (see trust.py), trusting that uid besides root; None checks
    nothing; a refused file's Item still comes back, for its content to be checked too.  seen:
    directories already reported, as (device, inode)."""
    fd = _open(path, follow, problems, missing_ok)
    if fd is None:
        return False, None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
            problems.append(Problem(path, None, None, f"is {_kind(st.st_mode)}, expected a YAML file"))
            return False, None
        refused = False
        if trusted is not None:
            reasons = [trust.file_problem(path, st, trusted)]
            if follow:
                reasons += trust.holder_problems(path, trusted, set() if seen is None else seen)
            for reason in filter(None, reasons):
                problems.append(Problem(path, None, None, reason))
                refused = True
        try:
            data = f.read(MAX_BYTES + 1)
        except OSError as e:
            problems.append(Problem(path, None, None, f"cannot read: {e.strerror or e}"))
            return False, None
    if len(data) > MAX_BYTES:
        problems.append(Problem(path, None, None, f"larger than {MAX_BYTES >> 20} MiB; a localaid "
                                "configuration is a few kB (is this the right file?)"))
        return False, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[line_start:e.start].decode("utf-8", "replace")) + 1
        problems.append(Problem(path, data.count(b"\n", 0, e.start) + 1, None,
                                f"not valid UTF-8 (byte 0x{data[e.start]:02x} in column {column}); "
                                "save the file as UTF-8"))
        return False, None
    ok, item = parse(text, path, problems)
    return ok and not refused, item


def merge(base: Item | None, over: Item) -> Item:
    """Mappings merged key by key, ``over`` winning; anything else replaced whole."""
    if base is None or not (base.kind == over.kind == "map"):
        return over
    merged = dict(base.value)
    for key, value in over.value.items():
        merged[key] = merge(merged.get(key), value)
    return Item("map", over.file, over.line, merged)


def conf_d_files(conf_d: str | None, problems: list[Problem]) -> list[str]:
    """The conf.d entries to read: named *.yaml, not starting with ".", in name order."""
    if conf_d is None:
        return []
    try:
        names = os.listdir(conf_d)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        problems.append(Problem(conf_d, None, None, "not a directory"))
        return []
    except OSError as e:
        problems.append(Problem(conf_d, None, None, f"cannot read directory: {e.strerror}"))
        return []
    return [os.path.join(conf_d, n) for n in sorted(names) if n.endswith(".yaml") and not n.startswith(".")]
