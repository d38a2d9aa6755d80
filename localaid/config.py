"""Configuration: /etc/localaid/localaid.yaml (+ conf.d/*.yaml) → frozen dataclasses.

Files are read in order (main file, then ``conf.d/*.yaml`` sorted by name); mappings are merged
deeply, later files win, lists and scalars are replaced whole.  ``null`` anywhere means "the
default" (in ``environment`` mappings it removes a variable set by an earlier file).

Validation is one pass over the merged document driven by the declarative ``_SCHEMA`` below; every
problem found is collected and raised together as :class:`ConfigError`, each one naming the file,
line and key it came from::

    /etc/localaid/localaid.yaml:12: health.interval: expected a duration such as "2s", got "fast"

Problems that concern a whole file (unreadable, a directory) have no line; problems with no key
(YAML syntax errors, bad bytes, a top level that is not a mapping) have no key.

Conventions decided here:
- Durations need a unit ("500ms", "2s", "5m", "1h30m", "1 min 30 s", "2d"); a bare number is
  refused (is ``5`` seconds or minutes?) except 0.
- Sizes: "512MB", "5.2GB" (powers of 1000), "12GiB" (powers of 1024); a bare integer is bytes.
- Booleans: only true/false.  YAML 1.1 reads yes/no/on/off as booleans; they are refused, so that
  ``mode: off`` style enums and ``"yes"`` typos cannot silently change meaning.
- Integers: decimal only; a quoted number is a string and refused (with a hint).
- String-valued keys take the scalar's text as written (``version: 0.10`` is "0.10", not 0.1).
- ``webui.listen`` must name an address: ":3000" is refused (say "0.0.0.0:3000" to expose the web UI,
  "127.0.0.1:3000" to keep it local); IPv6 goes in brackets, "[::1]:3000".
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from localaid.quantity import (  # noqa: F401  (re-exported: part of the config API)
    format_duration, format_size, go_duration, parse_duration, parse_duration_as, parse_size, quote,
)

__all__ = [
    "DEFAULT_PATH", "DEFAULT_CONF_D", "DEFAULT_WEBUI_VERSION", "DEFAULT_IGNORE_XIDS",
    "Problem", "ConfigError", "FrozenMap",
    "ModelSpec", "OllamaConfig", "AdminConfig", "WebUIConfig", "DevicesConfig", "GpuConfig",
    "HealthConfig", "MetricsConfig", "Config",
    "load", "parse_duration", "parse_size", "parse_listen", "format_duration", "format_size",
]

DEFAULT_PATH = "/etc/localaid/localaid.yaml"
DEFAULT_CONF_D = "/etc/localaid/conf.d"
DEFAULT_WEBUI_VERSION = "0.12.4"
# Application-caused Xids (the Kubernetes device plugin's skip list): not a sign of a sick GPU.
DEFAULT_IGNORE_XIDS = frozenset({13, 31, 43, 45, 68, 109})

# Environment variables that have their own config key; setting them in `environment` is refused.
OLLAMA_MANAGED_ENV = {
    "OLLAMA_HOST": "ollama.host and ollama.port",
    "OLLAMA_MODELS": "ollama.models_dir",
    "OLLAMA_KEEP_ALIVE": "ollama.keep_alive",
    "OLLAMA_NUM_PARALLEL": "ollama.num_parallel",
    "OLLAMA_MAX_LOADED_MODELS": "ollama.max_loaded_models",
    "OLLAMA_CONTEXT_LENGTH": "ollama.context_length",
    "OLLAMA_GPU_OVERHEAD": "ollama.gpu_overhead",
}
WEBUI_MANAGED_ENV = {
    "DATA_DIR": "webui.data_dir",
    "HOST": "webui.listen",
    "PORT": "webui.listen",
    "OLLAMA_BASE_URL": "ollama.host and ollama.port",
    "WEBUI_ADMIN_EMAIL": "webui.admin.email",
    "WEBUI_ADMIN_NAME": "webui.admin.name",
    "WEBUI_ADMIN_PASSWORD": "webui.admin.password_file",
}


# --------------------------------------------------------------------------------------- errors

@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    key: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class ConfigError(Exception):
    def __init__(self, errors: list[Problem]):
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.errors)


class FrozenMap(Mapping[str, str]):
    """An immutable, hashable str → str mapping (compares equal to a dict with the same items)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, str] | Any = ()):
        self._d = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


# ----------------------------------------------------------------------------- the dataclasses

@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str                      # normalised: always has a tag ("llama3" → "llama3:latest")
    keep_warm: bool = True


def _url_host(host: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)   # wildcard binds: talk via loopback
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class OllamaConfig:
    install_script: str = "https://ollama.com/install.sh"
    install_script_sha256: str | None = None     # lower-case hex
    allow_http: bool = False
    version: str | None = None                   # "0.6.2" (a leading "v" is dropped); None = newest
    install_timeout: float = 900.0
    host: str = "127.0.0.1"                      # no brackets, even for IPv6
    port: int = 11434
    models_dir: str | None = None
    keep_alive: str | None = None                # "forever" or a Go duration ("5m", "1h30m", "0s")
    num_parallel: int | None = None
    max_loaded_models: int | None = None
    context_length: int | None = None
    gpu_overhead: int | None = None              # bytes → OLLAMA_GPU_OVERHEAD
    environment: FrozenMap = FrozenMap()
    models: tuple[ModelSpec, ...] = ()

    @property
    def url(self) -> str:
        """Base URL for clients and probes ("http://127.0.0.1:11434")."""
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def bind(self) -> str:
        """The OLLAMA_HOST value ("127.0.0.1:11434", "[::1]:11434")."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    email: str = "admin@localhost"
    name: str = "Admin"
    password_file: str = "/etc/localaid/webui-admin-password"


@dataclass(frozen=True, slots=True)
class WebUIConfig:
    enabled: bool = True
    version: str = DEFAULT_WEBUI_VERSION
    host: str = "127.0.0.1"                      # from `listen`; no brackets
    port: int = 3000
    data_dir: str = "/var/lib/open-webui"
    python: str = "/usr/bin/python3"
    installer: str = "auto"                      # auto | uv | pip
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    keep_venvs: int = 2
    keep_backups: int = 5
    admin: AdminConfig = field(default_factory=AdminConfig)
    gpu: bool = False
    environment: FrozenMap = FrozenMap()
    install_timeout: float = 1800.0

    @property
    def url(self) -> str:
        """Base URL for probes ("http://127.0.0.1:3000")."""
        return f"http://{_url_host(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class DevicesConfig:
    mode: str = "ensure"                         # ensure | group | world | off
    group: str = "video"


@dataclass(frozen=True, slots=True)
class GpuConfig:
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    watch: bool = True
    ignore_xids: frozenset[int] = DEFAULT_IGNORE_XIDS


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval: float = 1.0
    timeout: float = 0.5
    failures: int = 3
    ollama_start_grace: float = 30.0
    webui_start_grace: float = 180.0
    model_load_grace: float = 300.0
    backoff_initial: float = 2.0
    backoff_max: float = 300.0
    restart_limit: int = 5
    restart_window: float = 600.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    textfile: str | None = "/var/lib/prometheus/node-exporter/localaid.prom"
    listen: str | None = None                    # normalised "host:port" ("[::1]:9101" for IPv6)


@dataclass(frozen=True, slots=True)
class Config:
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    webui: WebUIConfig = field(default_factory=WebUIConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sources: tuple[str, ...] = ()                # files actually read, in merge order


# ------------------------------------------------------------------------ hosts, URLs, names

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))


def parse_listen(text: str, example: str = "127.0.0.1:3000") -> tuple[str, int]:
    """"127.0.0.1:3000", "[::1]:3000", "0.0.0.0:3000", "localhost:3000" → (host, port); the host
    comes back without brackets.  ":3000" is refused on purpose (see module docstring)."""
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
        if not _valid_host(host):
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
    return u.scheme in schemes and bool(u.hostname)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_NAME = re.compile(rf"(?:{_SEGMENT}(?::\d+)?/)?(?:{_SEGMENT}/){{0,2}}{_SEGMENT}"
                         r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?")
_OLLAMA_VERSION = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?")
_PEP440 = re.compile(r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
# Directories localaid might create and chown: never one of these.
_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/opt", "/proc",
                          "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
                          "/var/lib", "/usr/local", "/usr/share"})


# -------------------------------------------------------------------------- the YAML layer
#
# Each file is composed (not constructed) by PyYAML, so that duplicate keys can be seen and every
# value keeps its line; nodes become _Items, which are merged file over file and then walked
# against the schema.  A mapping entry's _Item carries the line of its key.

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR = (_TAG + t for t in ("null", "bool", "int", "float", "str"))


@dataclass(eq=False, slots=True)
class _Item:
    kind: str                    # "map", "seq" or "scalar"
    file: str
    line: int
    value: Any                   # dict[str, _Item], list[_Item], or the scalar's text as written
    tag: str = ""

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.tag == _NULL


def _show(item: _Item) -> str:
    if item.kind == "map":
        return "a mapping"
    if item.kind == "seq":
        return "a list"
    if item.tag == _NULL:
        return "null"
    if item.tag in (_INT, _FLOAT) or (item.tag == _BOOL and item.value.lower() in ("true", "false")):
        return item.value
    return quote(item.value)


def _pyvalue(item: _Item) -> Any:
    """A scalar as the Python value a parse_* function should see (for its "got ..." message)."""
    if item.tag == _INT and _DECIMAL.fullmatch(item.value):
        return int(item.value)
    if item.tag == _FLOAT:
        try:
            return float(item.value)
        except ValueError:
            pass
    if item.tag == _BOOL and item.value.lower() in ("true", "false"):
        return item.value.lower() == "true"
    return item.value


class _TooBig(Exception):
    pass


def _to_items(node: yaml.Node, file: str, problems: list[Problem]) -> _Item:
    budget = [100_000]           # alias expansion guard ("billion laughs")
    active: set[int] = set()     # recursive aliases

    def convert(node: yaml.Node, key: str, line: int) -> _Item:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooBig
        if isinstance(node, yaml.ScalarNode):
            known = node.tag in (_NULL, _BOOL, _INT, _FLOAT, _STR)
            return _Item("scalar", file, line, node.value, node.tag if known else _STR)
        if id(node) in active:
            problems.append(Problem(file, line, key or None, "recursive YAML alias"))
            return _Item("scalar", file, line, "", _NULL)
        active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return _Item("seq", file, line, [
                    convert(v, f"{key}[{i}]", v.start_mark.line + 1) for i, v in enumerate(node.value)])
            out: dict[str, _Item] = {}
            first: dict[str, int] = {}
            for knode, vnode in node.value:
                kline = knode.start_mark.line + 1
                if not isinstance(knode, yaml.ScalarNode):
                    problems.append(Problem(file, kline, key or None,
                                            "keys must be plain names, not lists or mappings"))
                    continue
                path = f"{key}.{knode.value}" if key else knode.value
                if knode.tag == _TAG + "merge":
                    problems.append(Problem(file, kline, path,
                                            "YAML merge keys are not supported; write the keys out"))
                    continue
                if knode.value in first:
                    problems.append(Problem(file, kline, path,
                                            f"duplicate key (first set at line {first[knode.value]})"))
                else:
                    first[knode.value] = kline
                out[knode.value] = convert(vnode, path, kline)
            return _Item("map", file, line, out)
        finally:
            active.discard(id(node))

    try:
        return convert(node, "", node.start_mark.line + 1)
    except _TooBig:
        problems.append(Problem(file, None, None, "too many YAML nodes (alias expansion?)"))
        return _Item("scalar", file, 1, "", _NULL)


def _read(path: str, problems: list[Problem], missing_ok: bool) -> tuple[bool, _Item | None]:
    """→ (file was read, its top-level item or None when empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if not missing_ok:
            problems.append(Problem(path, None, None, "cannot read: no such file"))
        return False, None
    except IsADirectoryError:
        problems.append(Problem(path, None, None, "is a directory, expected a YAML file"))
        return False, None
    except PermissionError as e:
        problems.append(Problem(path, None, None, f"cannot read: {e.strerror} (are you root?)"))
        return False, None
    except OSError as e:
        problems.append(Problem(path, None, None, f"cannot read: {e.strerror or e}"))
        return False, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[line_start:e.start].decode("utf-8")) + 1
        problems.append(Problem(path, data.count(b"\n", 0, e.start) + 1, None,
                                f"not valid UTF-8 (byte 0x{data[e.start]:02x} in column {column}); "
                                "save the file as UTF-8"))
        return False, None
    text = text.removeprefix("\ufeff")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = f"YAML syntax error: {e.problem or e.context}"
        if e.problem == "but found another document":
            reason = 'YAML syntax error: a second document ("---"); the file must hold one mapping'
        elif e.context and e.problem and e.context_mark and e.context_mark.line != mark.line:
            reason += f" ({e.context} at line {e.context_mark.line + 1})"
        if "'\\t'" in reason:
            reason += "; YAML does not allow tabs for indentation"
        problems.append(Problem(path, mark.line + 1 if mark else None, None, reason))
        return False, None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        problems.append(Problem(path, line, None,
                                f"control character #x{e.character:04x} is not allowed in YAML"))
        return False, None
    except yaml.YAMLError as e:      # pragma: no cover - every PyYAML parse error is one of the above
        problems.append(Problem(path, None, None, f"YAML error: {e}"))
        return False, None
    if node is None:
        return True, None
    item = _to_items(node, path, problems)
    return True, None if item.is_null else item


def _merge(base: _Item | None, over: _Item) -> _Item:
    if base is None or not (base.kind == over.kind == "map"):
        return over
    merged = dict(base.value)
    for key, value in over.value.items():
        merged[key] = _merge(merged.get(key), value)
    return _Item("map", over.file, over.line, merged)


# ----------------------------------------------------------------------------- the schema
#
# A converter takes (item, ctx, key) and returns the value, or raises _Invalid(reason) for a
# problem with the value as a whole; converters of lists and mappings report per-element problems
# through ctx themselves.  null values never reach a converter (they mean "default").

class _Invalid(Exception):
    pass


Converter = Callable[["_Item", "_Ctx", str], Any]


@dataclass(frozen=True)
class _Field:
    conv: Converter
    attr: str | tuple[str, ...] | None = None    # dataclass attribute(s); default: the YAML key


@dataclass(frozen=True)
class _Group:
    """A nested YAML mapping whose keys land in the enclosing dataclass (health.backoff.max)."""
    fields: dict[str, Any]


@dataclass(frozen=True)
class _Section:
    """A nested YAML mapping that becomes its own dataclass (webui.admin → AdminConfig)."""
    cls: type
    fields: dict[str, Any]


class _Ctx:
    def __init__(self, problems: list[Problem], default_file: str):
        self.problems = problems
        self.default_file = default_file
        self.given: dict[str, _Item] = {}    # key path → item, for every key present
        self.failed: set[str] = set()        # key paths whose value was refused

    def error(self, item: _Item, key: str, reason: str) -> None:
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


def _unknown(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:
        close = [p for p in _all_paths() if p.rpartition(".")[2] == name][:1]
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return f"unknown key (expected one of: {', '.join(known)})"


def _walk(fields: dict[str, Any], item: _Item, key: str, ctx: _Ctx, kwargs: dict[str, Any]) -> None:
    if item.kind != "map":
        ctx.error(item, key, f"expected a mapping, got {_show(item)}")
        ctx.failed.add(key)
        return
    for name, child in item.value.items():
        path = f"{key}.{name}" if key else name
        spec = fields.get(name)
        if spec is None:
            ctx.error(child, path, _unknown(name, fields))
            continue
        ctx.given[path] = child
        if child.is_null:
            continue
        if isinstance(spec, _Section):
            kwargs[name] = _build(spec, child, path, ctx)
        elif isinstance(spec, _Group):
            _walk(spec.fields, child, path, ctx, kwargs)
        else:
            before = len(ctx.problems)
            try:
                value = spec.conv(child, ctx, path)
            except _Invalid as e:
                ctx.error(child, path, str(e))
            if len(ctx.problems) > before:
                ctx.failed.add(path)
            elif isinstance(spec.attr, tuple):
                kwargs.update(zip(spec.attr, value))
            else:
                kwargs[spec.attr or name] = value


def _build(section: _Section, item: _Item, key: str, ctx: _Ctx) -> Any:
    kwargs: dict[str, Any] = {}
    _walk(section.fields, item, key, ctx, kwargs)
    return section.cls(**kwargs)


# ---- converters

def _scalar(item: _Item, what: str) -> str:
    if item.kind != "scalar":
        raise _Invalid(f"expected {what}, got {_show(item)}")
    if any(c in item.value for c in "\n\r\0"):
        raise _Invalid(f"expected {what} on one line, got {_show(item)}")
    return item.value


def _string(what: str = "a string", pattern: re.Pattern[str] | None = None, hint: str = "",
            normalise: Callable[[str], str] = lambda s: s) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> str:
        text = normalise(_scalar(item, what))
        if not text or (pattern and not pattern.fullmatch(text)):
            raise _Invalid(f"expected {what}, got {_show(item)}{hint}")
        return text
    return conv


def _bool(item: _Item, ctx: _Ctx | None = None, key: str = "") -> bool:
    if item.kind == "scalar" and item.tag == _BOOL:
        if item.value.lower() in ("true", "false"):
            return item.value.lower() == "true"
        raise _Invalid(f"expected true or false, got {_show(item)} "
                       "(YAML 1.1 words such as yes/no/on/off are not accepted)")
    quoted = item.kind == "scalar" and item.value.lower() in ("true", "false")
    raise _Invalid(f"expected true or false, got {_show(item)}" + (" (remove the quotes)" if quoted else ""))


def _integer(lo: int, hi: int) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> int:
        if item.kind == "scalar" and item.tag == _INT:
            if not _DECIMAL.fullmatch(item.value):
                raise _Invalid(f"expected a decimal integer, got {item.value}")
            value = int(item.value)
        else:
            quoted = item.kind == "scalar" and item.tag == _STR and _DECIMAL.fullmatch(item.value.strip())
            raise _Invalid(f"expected an integer, got {_show(item)}" + (" (remove the quotes)" if quoted else ""))
        if not lo <= value <= hi:
            raise _Invalid(f"must be between {lo} and {hi}, got {item.value}")
        return value
    return conv


def _duration(lo: float, hi: float) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> float:
        if item.kind != "scalar":
            raise _Invalid(f'expected a duration such as "2s", got {_show(item)}')
        try:
            value = parse_duration(_pyvalue(item))
        except ValueError as e:
            raise _Invalid(str(e)) from None
        if not lo <= value <= hi:
            raise _Invalid(f"must be between {format_duration(lo)} and {format_duration(hi)}, "
                           f"got {_show(item)}")
        return value
    return conv


def _size(lo: int, hi: int) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> int:
        if item.kind != "scalar":
            raise _Invalid(f'expected a size such as "512MB" or "12GiB", got {_show(item)}')
        try:
            value = parse_size(_pyvalue(item))
        except ValueError as e:
            raise _Invalid(str(e)) from None
        if not lo <= value <= hi:
            raise _Invalid(f"must be between {format_size(lo)} and {format_size(hi, True)}, got {_show(item)}")
        return value
    return conv


def _enum(*choices: str) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> str:
        if item.kind == "scalar" and item.value in choices:    # the text: `mode: off` is "off"
            return item.value
        close = difflib.get_close_matches(item.value, choices, n=1) if item.kind == "scalar" else []
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise _Invalid(f"expected one of {', '.join(choices)}, got {_show(item)}{hint}")
    return conv


def _path(what: str = "an absolute path", directory: bool = False) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> str:
        text = _scalar(item, what)
        if not text.startswith("/"):
            raise _Invalid(f"expected {what} (starting with /), got {_show(item)}")
        if directory and os.path.normpath(text) in _SYSTEM_DIRS:
            raise _Invalid(f"refusing {_show(item)}: a system directory; "
                           "name a directory of its own, e.g. under /var/lib or /srv")
        return text
    return conv


def _url(schemes: tuple[str, ...], what: str, paths: bool = False) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> str:
        text = _scalar(item, what)
        if (paths and text.startswith("/")) or _is_url(text, schemes):
            return text
        raise _Invalid(f"expected {what}, got {_show(item)}")
    return conv


def _listen(example: str) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> tuple[str, int]:
        if item.kind != "scalar":
            raise _Invalid(f'expected host:port such as "{example}", got {_show(item)}')
        try:
            return parse_listen(item.value if item.tag == _STR else _pyvalue(item), example)
        except ValueError as e:
            raise _Invalid(str(e)) from None
    return conv


def _listen_string(example: str) -> Converter:
    inner = _listen(example)

    def conv(item: _Item, ctx: _Ctx, key: str) -> str:
        host, port = inner(item, ctx, key)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return conv


def _host(item: _Item, ctx: _Ctx, key: str) -> str:
    text = _scalar(item, "a host name or IP address")
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if _valid_host(host):
        return host
    hint = ""
    if re.fullmatch(r".+:\d+", text) and _valid_host(text.rpartition(":")[0]):
        hint = " (put the port in ollama.port)"
    raise _Invalid(f"expected a host name or IP address, got {_show(item)}{hint}")


def _list_of(element: Converter, what: str, container: Callable[[list[Any]], Any] = tuple) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> Any:
        if item.kind != "seq":
            raise _Invalid(f"expected a list of {what}, got {_show(item)}")
        out = []
        for i, el in enumerate(item.value):
            try:
                out.append(element(el, ctx, f"{key}[{i}]"))
            except _Invalid as e:
                ctx.error(el, f"{key}[{i}]", str(e))
        return container(out)
    return conv


def _environment(managed: dict[str, str]) -> Converter:
    def conv(item: _Item, ctx: _Ctx, key: str) -> FrozenMap:
        if item.kind != "map":
            raise _Invalid(f"expected a mapping of variable names to values, got {_show(item)}")
        env = {}
        for name, value in item.value.items():
            path = f"{key}.{name}"
            if not _ENV_NAME.fullmatch(name):
                ctx.error(value, path, "not a valid environment variable name "
                                       "(letters, digits and _, not starting with a digit)")
            elif name in managed:
                ctx.error(value, path, f"set from {managed[name]}; configure it there")
            elif value.is_null:
                continue                    # null removes a variable set by an earlier file
            elif value.kind != "scalar" or any(c in value.value for c in "\n\r\0"):
                ctx.error(value, path, f"expected a one-line value, got {_show(value)}")
            else:
                env[name] = value.value     # as written: `OLLAMA_DEBUG: 1` is "1", `X: yes` is "yes"
        return FrozenMap(sorted(env.items()))
    return conv


def _model_name(item: _Item) -> str:
    text = _scalar(item, "a model name")
    if len(text) > 300 or not _MODEL_NAME.fullmatch(text):
        raise _Invalid(f'expected a model name such as "llama3.2:3b", got {_show(item)}')
    return text if ":" in text.rpartition("/")[2] else text + ":latest"


def _models(item: _Item, ctx: _Ctx, key: str) -> tuple[ModelSpec, ...]:
    if item.kind != "seq":
        raise _Invalid(f"expected a list of models, got {_show(item)}")
    out: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for i, el in enumerate(item.value):
        path, keep_warm, name_item = f"{key}[{i}]", True, el
        try:
            if el.kind == "map":
                for sub, value in el.value.items():
                    if sub not in ("name", "keep_warm"):
                        ctx.error(value, f"{path}.{sub}", _unknown(sub, ("name", "keep_warm")))
                    elif sub == "keep_warm" and not value.is_null:
                        try:
                            keep_warm = _bool(value)
                        except _Invalid as e:
                            ctx.error(value, f"{path}.keep_warm", str(e))
                name_item = el.value.get("name")
                if name_item is None or name_item.is_null:
                    raise _Invalid('missing "name"')
            elif el.is_null:
                raise _Invalid("expected a model name, got null")
            name = _model_name(name_item)
        except _Invalid as e:
            ctx.error(name_item or el, path, str(e))
            continue
        if name in seen:
            ctx.error(name_item, path, f'"{name}" is listed twice (first at line {seen[name]})')
            continue
        seen[name] = name_item.line
        out.append(ModelSpec(name, keep_warm))
    return tuple(out)


def _keep_alive(item: _Item, ctx: _Ctx, key: str) -> str:
    if item.kind == "scalar" and item.value == "forever":
        return "forever"
    if item.kind == "scalar" and item.tag in (_INT, _FLOAT) and item.value.startswith("-"):
        raise _Invalid(f'expected a duration such as "5m" or forever, got {item.value} '
                       "(write forever to keep models loaded indefinitely)")
    if item.kind != "scalar":
        raise _Invalid(f'expected a duration such as "5m" or forever, got {_show(item)}')
    try:
        return go_duration(parse_duration_as(_pyvalue(item), '"5m" or forever'))
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _textfile(item: _Item, ctx: _Ctx, key: str) -> str | None:
    if item.kind == "scalar" and item.tag == _BOOL and item.value.lower() == "false":
        return None
    what = "an absolute path or false"
    text = _scalar(item, what)
    if not text.startswith("/"):
        raise _Invalid(f"expected {what}, got {_show(item)}")
    if not text.endswith(".prom"):
        raise _Invalid(f'must end in ".prom" (the node exporter reads only *.prom files), got {_show(item)}')
    return text


def _strip_v(text: str) -> str:
    return text[1:] if text[:1] in "vV" and text[1:2].isdigit() else text


MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

_SCHEMA = _Section(Config, {
    "ollama": _Section(OllamaConfig, {
        "install_script": _Field(_url(("https", "http"), "an https:// URL or an absolute path", paths=True)),
        "install_script_sha256": _Field(_string("64 hexadecimal digits (a SHA-256)", _SHA256,
                                                normalise=str.lower)),
        "allow_http": _Field(_bool),
        "version": _Field(_string('a version such as "0.6.2"', _OLLAMA_VERSION,
                                  hint=" (leave it unset for the newest)", normalise=_strip_v)),
        "install_timeout": _Field(_duration(10, 6 * HOUR)),
        "host": _Field(_host),
        "port": _Field(_integer(1, 65535)),
        "models_dir": _Field(_path(directory=True)),
        "keep_alive": _Field(_keep_alive),
        "num_parallel": _Field(_integer(1, 128)),
        "max_loaded_models": _Field(_integer(1, 64)),
        "context_length": _Field(_integer(256, 2**24)),
        "gpu_overhead": _Field(_size(0, 2**40)),
        "environment": _Field(_environment(OLLAMA_MANAGED_ENV)),
        "models": _Field(_models),
    }),
    "webui": _Section(WebUIConfig, {
        "enabled": _Field(_bool),
        "version": _Field(_string('a version such as "0.6.5"', _PEP440, normalise=_strip_v)),
        "listen": _Field(_listen("127.0.0.1:3000"), attr=("host", "port")),
        "data_dir": _Field(_path(directory=True)),
        "python": _Field(_path()),
        "installer": _Field(_enum("auto", "uv", "pip")),
        "index_url": _Field(_url(("https", "http"), "an http(s):// URL")),
        "extra_index_urls": _Field(_list_of(_url(("https", "http"), "an http(s):// URL"), "URLs")),
        "find_links": _Field(_list_of(_url(("https", "http"), "an http(s):// URL or an absolute path",
                                           paths=True), "URLs or paths")),
        "no_index": _Field(_bool),
        "keep_venvs": _Field(_integer(1, 10)),
        "keep_backups": _Field(_integer(1, 100)),
        "admin": _Section(AdminConfig, {
            "email": _Field(_string('an e-mail address such as "admin@localhost"', _EMAIL)),
            "name": _Field(_string("a name")),
            "password_file": _Field(_path()),
        }),
        "gpu": _Field(_bool),
        "environment": _Field(_environment(WEBUI_MANAGED_ENV)),
        "install_timeout": _Field(_duration(1 * MINUTE, 6 * HOUR)),
    }),
    "gpu": _Section(GpuConfig, {
        "devices": _Section(DevicesConfig, {
            "mode": _Field(_enum("ensure", "group", "world", "off")),
            "group": _Field(_string("a group name", _GROUP)),
        }),
        "watch": _Field(_bool),
        "ignore_xids": _Field(_list_of(_integer(1, 999), "Xid numbers", frozenset)),
    }),
    "health": _Section(HealthConfig, {
        "interval": _Field(_duration(0.2, MINUTE)),
        "timeout": _Field(_duration(0.1, 30)),
        "failures": _Field(_integer(1, 20)),
        "start_grace": _Group({
            "ollama": _Field(_duration(0, HOUR), attr="ollama_start_grace"),
            "webui": _Field(_duration(0, HOUR), attr="webui_start_grace"),
        }),
        "model_load_grace": _Field(_duration(0, HOUR)),
        "backoff": _Group({
            "initial": _Field(_duration(0.1, HOUR), attr="backoff_initial"),
            "max": _Field(_duration(1, DAY), attr="backoff_max"),
        }),
        "restart_limit": _Group({
            "count": _Field(_integer(1, 100), attr="restart_limit"),
            "window": _Field(_duration(10, DAY), attr="restart_window"),
        }),
    }),
    "metrics": _Section(MetricsConfig, {
        "textfile": _Field(_textfile),
        "listen": _Field(_listen_string("127.0.0.1:9101")),
    }),
})


def _all_paths(fields: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Every key path of the schema, sections and groups included ("health.backoff.max")."""
    out = []
    for name, spec in (_SCHEMA.fields if fields is None else fields).items():
        path = prefix + name
        out.append(path)
        if isinstance(spec, (_Section, _Group)):
            out += _all_paths(spec.fields, path + ".")
    return out


# ---- checks across keys (run on the built Config; skipped when a key they need was refused)

def _check_http(cfg: Config, ctx: _Ctx) -> None:
    if (cfg.ollama.install_script.startswith("http://") and not cfg.ollama.allow_http
            and ctx.ok("ollama.install_script", "ollama.allow_http")):
        ctx.report("ollama.install_script", "plain http:// is refused unless ollama.allow_http is true")


def _check_backoff(cfg: Config, ctx: _Ctx) -> None:
    h, keys = cfg.health, ("health.backoff.initial", "health.backoff.max")
    if h.backoff_initial > h.backoff_max and ctx.ok(*keys):
        if keys[0] in ctx.given:
            ctx.report(keys[0], f"must not be more than health.backoff.max "
                                f"({format_duration(h.backoff_max)}), got {format_duration(h.backoff_initial)}")
        else:
            ctx.report(keys[1], f"must not be less than health.backoff.initial "
                                f"({format_duration(h.backoff_initial)}), got {format_duration(h.backoff_max)}")


def _check_ports(cfg: Config, ctx: _Ctx) -> None:
    binds = [("ollama.port", "ollama", cfg.ollama.host, cfg.ollama.port)]
    if cfg.webui.enabled:
        binds.append(("webui.listen", "webui.listen", cfg.webui.host, cfg.webui.port))
    if cfg.metrics.listen:
        host, port = parse_listen(cfg.metrics.listen)
        binds.append(("metrics.listen", "metrics.listen", host, port))
    wildcard = {"0.0.0.0", "::"}
    for i, (key, name, host, port) in enumerate(binds):
        for other_key, other, other_host, other_port in binds[:i]:
            if (port == other_port and (host == other_host or {host, other_host} & wildcard)
                    and ctx.ok(key, other_key, "ollama.host")):
                where = key if key in ctx.given else other_key
                what = other if where == key else name
                ctx.report(where, f"port {port} is already used by {what}")


_CHECKS = (_check_http, _check_backoff, _check_ports)


# ---------------------------------------------------------------------------------- load()

def _conf_d_files(conf_d: str | None, problems: list[Problem]) -> list[str]:
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


def load(path: str = DEFAULT_PATH, conf_d: str | None = DEFAULT_CONF_D, *, missing_ok: bool = True) -> Config:
    """Read, merge and validate the configuration; raise ConfigError listing every problem.

    A missing main file means all defaults (missing_ok=False makes it an error, for
    `localaid config check FILE`).  conf_d=None skips the drop-in directory; a missing one is fine.
    Only conf.d entries named *.yaml (and not starting with ".") are read, in name order.
    """
    path = os.fspath(path)
    conf_d = None if conf_d is None else os.fspath(conf_d)
    problems: list[Problem] = []
    files = [path] + _conf_d_files(conf_d, problems)
    merged, sources = None, []
    for i, file in enumerate(files):
        was_read, item = _read(file, problems, missing_ok=missing_ok or i > 0)
        if was_read:
            sources.append(file)
        if item is None:
            continue
        if item.kind != "map":
            problems.append(Problem(file, item.line, None, f"expected a mapping at the top level, got {_show(item)}"))
            continue
        _build(_SCHEMA, item, "", _Ctx(problems, file))     # every value of every file is checked,
        merged = _merge(merged, item)                       # even one a later file overrides

    # The merged document holds only values already checked above: its own conversion problems
    # would be repeats, so they go to a scratch list; the checks across keys report for real.
    ctx = _Ctx([], path)
    config = _build(_SCHEMA, merged or _Item("map", path, 1, {}), "", ctx)
    ctx.problems = problems
    for check in _CHECKS:
        check(config, ctx)
    if problems:
        order: dict[str | None, int] = {}
        for file in (path, conf_d, *files):
            order.setdefault(file, len(order))
        problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line or 0))
        raise ConfigError(problems)
    return dataclasses.replace(config, sources=tuple(sources))
