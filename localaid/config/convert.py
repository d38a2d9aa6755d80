"""Converters: one YAML value (an Item, with its file and line) → the Python value of a key.

A converter is called as ``conv(item, ctx, key)`` and returns the value, or raises
``Invalid(reason)`` for a problem with the value as a whole; converters of lists and mappings
report per-element problems through ``ctx.error`` themselves.  null values never reach a converter
(they mean "the default").  Factories (``integer(1, 20)``) make converters with their bounds.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from localaid.config.values import FrozenMap, ModelSpec, Problem
from localaid.config.yamlfile import BOOL, DECIMAL, FLOAT, INT, STR, Item, pyvalue, show
from localaid.quantity import (
    format_duration, format_size, go_duration, parse_duration, parse_duration_as, parse_size, quote,
)


class Invalid(Exception):
    """The value of a key is refused; the message is the reason."""


class Ctx:
    """What converters and checks report through, while one document is walked."""

    def __init__(self, problems: list[Problem], default_file: str, paths: Iterable[str] = ()):
        self.problems = problems
        self.default_file = default_file
        self.paths = list(paths)             # every key path of the schema, for "did you mean"
        self.given: dict[str, Item] = {}     # key path → item, for every key present
        self.failed: set[str] = set()        # key paths whose value was refused

    def error(self, item: Item, key: str, reason: str) -> None:
        self.problems.append(Problem(item.file, item.line, key or None, reason))

    def ok(self, *keys: str) -> bool:
        """No problem was found in these keys (or the sections holding them)."""
        return not any(k == f or k.startswith(f + ".") for k in keys for f in self.failed)

    def report(self, key: str, reason: str) -> None:
        """A problem found after conversion; located at the key or the nearest given ancestor."""
        path = key
        while path and path not in self.given:
            path = path.rpartition(".")[0]
        item = self.given.get(path)
        file, line = (item.file, item.line) if item else (self.default_file, None)
        self.problems.append(Problem(file, line, key, reason))

    def unknown(self, name: str, known: Iterable[str]) -> str:
        """The reason for an unknown key, with the likeliest intended one."""
        known = list(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if not close:
            close = [p for p in self.paths if p.rpartition(".")[2] == name][:1]
        if close:
            return f'unknown key (did you mean "{close[0]}"?)'
        return f"unknown key (expected one of: {', '.join(known)})"


Converter = Callable[[Item, Ctx, str], Any]

# ------------------------------------------------------------------------ hosts, URLs, names

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_NAME = re.compile(rf"(?:{_SEGMENT}(?::\d+)?/)?(?:{_SEGMENT}/){{0,2}}{_SEGMENT}"
                         r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?")
OLLAMA_VERSION = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?")
PEP440 = re.compile(r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
# Directories localaid might create and chown: never one of these.
_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/opt", "/proc",
                          "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
                          "/var/lib", "/usr/local", "/usr/share"})


def valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))


def parse_listen(text: str, example: str = "127.0.0.1:3000") -> tuple[str, int]:
    """"127.0.0.1:3000", "[::1]:3000", "0.0.0.0:3000", "localhost:3000" → (host, port); the host
    comes back without brackets.  ":3000" is refused on purpose (see the package docstring)."""
    expect = f'expected host:port such as "{example}", got {quote(text)}'
    port_part = example.rsplit(":", 1)[1]
    if not isinstance(text, str):
        raise ValueError(expect)
    m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
    if m:
        host, port = m.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{expect} (brackets are only for IPv6 addresses)") from None
    elif text.count(":") > 1:
        raise ValueError(f'{expect} (write IPv6 addresses in brackets, e.g. "[::1]:{port_part}")')
    elif ":" not in text:
        raise ValueError(expect)
    else:
        host, port = text.split(":")
        if not host:
            raise ValueError(f'{expect} (name the address: "0.0.0.0:{port}" for all interfaces, '
                             f'"127.0.0.1:{port}" for this machine only)')
        if not valid_host(host):
            raise ValueError(f"{expect} ({quote(host)} is not a host name or IP address)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{expect} (the port must be a number from 1 to 65535)")
    return host, int(port)


def _is_url(text: str, schemes: tuple[str, ...]) -> bool:
    if any(c.isspace() for c in text):
        return False
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return False
    return u.scheme in schemes and (bool(u.hostname) or (u.scheme == "file" and u.path.startswith("/")))


# ------------------------------------------------------------------------------- converters

def scalar(item: Item, what: str) -> str:
    if item.kind != "scalar":
        raise Invalid(f"expected {what}, got {show(item)}")
    if any(c in item.value for c in "\n\r\0"):
        raise Invalid(f"expected {what} on one line, got {show(item)}")
    return item.value


def _not_too_long(item: Item, what: str, limit: int = 100) -> None:
    """Values parsed by quantity.py or parse_listen, whose messages repeat parts of them: a long
    one cannot be valid, and is refused here with a message of bounded length."""
    if len(item.value) > limit:
        raise Invalid(f"expected {what}, got {show(item)}")


def string(what: str = "a string", pattern: re.Pattern[str] | None = None, hint: str = "",
           normalise: Callable[[str], str] = lambda s: s) -> Converter:
    def conv(item: Item, ctx: Ctx, key: str) -> str:
        text = normalise(scalar(item, what))
        if not text or (pattern and not pattern.fullmatch(text)):
            raise Invalid(f"expected {what}, got {show(item)}{hint}")
        return text
    return conv


def boolean(item: Item, ctx: Ctx | None = None, key: str = "") -> bool:
    if item.kind == "scalar" and item.tag == BOOL:
        if item.value.lower() in ("true", "false"):
            return item.value.lower() == "true"
        raise Invalid(f"expected true or false, got {show(item)} "
                      "(YAML 1.1 words such as yes/no/on/off are not accepted)")
    quoted = item.kind == "scalar" and item.value.lower() in ("true", "false")
    raise Invalid(f"expected true or false, got {show(item)}" + (" (remove the quotes)" if quoted else ""))


def integer(lo: int, hi: int) -> Converter:
    def conv(item: Item, ctx: Ctx, key: str) -> int:
        if item.kind == "scalar" and item.tag == INT:
            if not DECIMAL.fullmatch(item.value):
                raise Invalid(f"expected a decimal integer, got {show(item)}")
            digits = item.value.lstrip("+-").replace("_", "").lstrip("0")
            value = int(item.value) if len(digits) < 100 else (hi + 1 if item.value[0] != "-" else lo - 1)
        else:
            quoted = item.kind == "scalar" and item.tag == STR and DECIMAL.fullmatch(item.value.strip())
            raise Invalid(f"expected an integer, got {show(item)}" + (" (remove the quotes)" if quoted else ""))
        if not lo <= value <= hi:
            raise Invalid(f"must be between {lo} and {hi}, got {show(item)}")
        return value
    return conv


def _quantity(example: str, parse: Callable[[Any], Any], lo, hi, lo_text: str, hi_text: str) -> Converter:
    """A duration or a size: one scalar, parsed, within [lo, hi] (the bounds shown as given)."""
    def conv(item: Item, ctx: Ctx, key: str):
        if item.kind != "scalar":
            raise Invalid(f"expected {example}, got {show(item)}")
        _not_too_long(item, example)
        try:
            value = parse(pyvalue(item))
        except ValueError as e:
            raise Invalid(str(e)) from None
        if not lo <= value <= hi:
            raise Invalid(f"must be between {lo_text} and {hi_text}, got {show(item)}")
        return value
    return conv


def duration(lo: float, hi: float) -> Converter:
    return _quantity('a duration such as "2s"', parse_duration, lo, hi, format_duration(lo), format_duration(hi))


def size(lo: int, hi: int) -> Converter:
    return _quantity('a size such as "512MB" or "12GiB"', parse_size, lo, hi, format_size(lo), format_size(hi, True))


def enum(*choices: str) -> Converter:
    def conv(item: Item, ctx: Ctx, key: str) -> str:
        if item.kind == "scalar" and item.value in choices:    # the text: `mode: off` is "off"
            return item.value
        close = difflib.get_close_matches(item.value, choices, n=1) if item.kind == "scalar" else []
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise Invalid(f"expected one of {', '.join(choices)}, got {show(item)}{hint}")
    return conv


def path(what: str = "an absolute path", directory: bool = False, keywords: tuple[str, ...] = ()) -> Converter:
    """An absolute path, or one of `keywords` (e.g. "auto")."""
    def conv(item: Item, ctx: Ctx, key: str) -> str:
        text = scalar(item, what)
        if text in keywords:
            return text
        if not text.startswith("/"):
            raise Invalid(f"expected {what} (starting with /), got {show(item)}")
        if directory and os.path.normpath(text) in _SYSTEM_DIRS:
            raise Invalid(f"refusing {show(item)}: a system directory; "
                          "name a directory of its own, e.g. under /var/lib or /srv")
        return text
    return conv


def url(schemes: tuple[str, ...], what: str, paths: bool = False) -> Converter:
    def conv(item: Item, ctx: Ctx, key: str) -> str:
        text = scalar(item, what)
        if (paths and text.startswith("/")) or _is_url(text, schemes):
            return text
        raise Invalid(f"expected {what}, got {show(item)}")
    return conv


def listen(example: str) -> Converter:
    """→ (host, port): for a key that sets two attributes."""
    def conv(item: Item, ctx: Ctx, key: str) -> tuple[str, int]:
        if item.kind != "scalar":
            raise Invalid(f'expected host:port such as "{example}", got {show(item)}')
        _not_too_long(item, f'host:port such as "{example}"', 300)
        try:
            return parse_listen(item.value if item.tag == STR else pyvalue(item), example)
        except ValueError as e:
            raise Invalid(str(e)) from None
    return conv


def listen_string(example: str) -> Converter:
    """→ "host:port" normalised ("[::1]:9101" for IPv6)."""
    inner = listen(example)

    def conv(item: Item, ctx: Ctx, key: str) -> str:
        host, port = inner(item, ctx, key)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return conv


def host(item: Item, ctx: Ctx, key: str) -> str:
    text = scalar(item, "a host name or IP address")
    name = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if valid_host(name):
        return name
    hint = ""
    if re.fullmatch(r".+:\d+", text) and valid_host(text.rpartition(":")[0]):
        hint = " (put the port in ollama.port)"
    raise Invalid(f"expected a host name or IP address, got {show(item)}{hint}")


def cidr(item: Item, ctx: Ctx, key: str) -> str:
    """An address or network ("192.168.1.20", "10.0.0.0/24", "fd00::/64"), normalised."""
    text = scalar(item, 'an IP address or network such as "192.168.1.0/24"')
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(f'expected an IP address or network such as "192.168.1.0/24", got {show(item)}') from None
    return str(net) if net.num_addresses > 1 else str(net.network_address)


def list_of(element: Converter, what: str, container: Callable[[list[Any]], Any] = tuple) -> Converter:
    def conv(item: Item, ctx: Ctx, key: str) -> Any:
        if item.kind != "seq":
            raise Invalid(f"expected a list of {what}, got {show(item)}")
        out = []
        for i, el in enumerate(item.value):
            try:
                out.append(element(el, ctx, f"{key}[{i}]"))
            except Invalid as e:
                ctx.error(el, f"{key}[{i}]", str(e))
        return container(out)
    return conv


def environment(managed: dict[str, str]) -> Converter:
    """NAME: value → FrozenMap; ``managed`` names the variables set from other keys (refused)."""
    def conv(item: Item, ctx: Ctx, key: str) -> FrozenMap:
        if item.kind != "map":
            raise Invalid(f"expected a mapping of variable names to values, got {show(item)}")
        env = {}
        for name, value in item.value.items():
            where = f"{key}.{name}"
            if not ENV_NAME.fullmatch(name):
                ctx.error(value, where, "not a valid environment variable name "
                                        "(letters, digits and _, not starting with a digit)")
            elif name in managed:
                ctx.error(value, where, f"set from {managed[name]}; configure it there")
            elif value.is_null:
                continue                    # null removes a variable set by an earlier file
            elif value.kind != "scalar" or any(c in value.value for c in "\n\r\0"):
                ctx.error(value, where, f"expected a one-line value, got {show(value)}")
            else:
                env[name] = value.value     # as written: `OLLAMA_DEBUG: 1` is "1", `X: yes` is "yes"
        return FrozenMap(sorted(env.items()))
    return conv


def _model_name(item: Item) -> str:
    text = scalar(item, "a model name")
    if len(text) > 300 or not _MODEL_NAME.fullmatch(text):
        raise Invalid(f'expected a model name such as "llama3.2:3b", got {show(item)}')
    return text if ":" in text.rpartition("/")[2] else text + ":latest"


def models(item: Item, ctx: Ctx, key: str) -> tuple[tuple[ModelSpec, ...], bool]:
    """→ (models, auto): `auto` (localaid picks one for this machine) or a list of models."""
    if item.kind == "scalar" and item.tag == STR and item.value == "auto":
        return (), True
    if item.kind != "seq":
        raise Invalid(f"expected auto or a list of models, got {show(item)}")
    out: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for i, el in enumerate(item.value):
        where, keep_warm, name_item = f"{key}[{i}]", True, el
        try:
            if el.kind == "map":
                for sub, value in el.value.items():
                    if sub not in ("name", "keep_warm"):
                        ctx.error(value, f"{where}.{sub}", ctx.unknown(sub, ("name", "keep_warm")))
                    elif sub == "keep_warm" and not value.is_null:
                        try:
                            keep_warm = boolean(value)
                        except Invalid as e:
                            ctx.error(value, f"{where}.keep_warm", str(e))
                name_item = el.value.get("name")
                if name_item is None or name_item.is_null:
                    raise Invalid('missing "name"')
            elif el.is_null:
                raise Invalid("expected a model name, got null")
            name = _model_name(name_item)
        except Invalid as e:
            ctx.error(name_item or el, where, str(e))
            continue
        if name in seen:
            ctx.error(name_item, where, f'"{name}" is listed twice (first at line {seen[name]})')
            continue
        seen[name] = name_item.line
        out.append(ModelSpec(name, keep_warm))
    return tuple(out), False


_GO_MAX_SECONDS = 2**63 / 1e9         # Go's time.Duration: int64 nanoseconds, about 292 years


def keep_alive(item: Item, ctx: Ctx, key: str) -> str:
    if item.kind == "scalar" and item.value == "forever":
        return "forever"
    if item.kind == "scalar" and item.tag in (INT, FLOAT) and item.value.startswith("-"):
        raise Invalid(f'expected a duration such as "5m" or forever, got {show(item)} '
                      "(write forever to keep models loaded indefinitely)")
    if item.kind != "scalar":
        raise Invalid(f'expected a duration such as "5m" or forever, got {show(item)}')
    _not_too_long(item, 'a duration such as "5m" or forever')
    try:
        seconds = parse_duration_as(pyvalue(item), '"5m" or forever')
    except ValueError as e:
        raise Invalid(str(e)) from None
    if not seconds < _GO_MAX_SECONDS:
        raise Invalid(f"longer than Ollama can count, got {show(item)} "
                      "(write forever to keep models loaded indefinitely)")
    return go_duration(seconds)


def textfile(item: Item, ctx: Ctx, key: str) -> str | None:
    if item.kind == "scalar" and item.tag == BOOL and item.value.lower() == "false":
        return None
    what = "an absolute path or false"
    text = scalar(item, what)
    if not text.startswith("/"):
        raise Invalid(f"expected {what}, got {show(item)}")
    if not text.endswith(".prom"):
        raise Invalid(f'must end in ".prom" (the node exporter reads only *.prom files), got {show(item)}')
    return text


def strip_v(text: str) -> str:
    return text[1:] if text[:1] in "vV" and text[1:2].isdigit() else text
