"""Configuration: /etc/localaid/localaid.yaml (+ conf.d/*.yaml) → frozen dataclasses.

Files are read in order (main file, then ``conf.d/*.yaml`` sorted by name); mappings are merged
deeply, later files win, lists and scalars are replaced whole.  ``null`` anywhere means "the
default" (in ``environment`` mappings it removes a variable set by an earlier file).

Validation is one pass over the merged document driven by the key declarations; every problem
found is collected and raised together as :class:`ConfigError`, each one naming the file, line
and key it came from::

    /etc/localaid/localaid.yaml:12: health.interval: expected a duration such as "2s", got "fast"

Problems that concern a whole file (unreadable, a directory, a symbolic link in conf.d, writable
by someone other than root) have no line; problems with no key (YAML syntax errors, bad bytes, a
top level that is not a mapping, nesting too deep) have no key.  No input makes load() crash or
hang: see yamlfile.py for the limits and trust.py for who may own and write the files.

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

The modules (only this package's names are the API):
  values.py    Problem, ConfigError, FrozenMap, ModelSpec
  yamlfile.py  reading one file safely → Items with file and line; merging; listing conf.d
  trust.py     refusing files and directories that anyone but root can change (as root)
  convert.py   converters (one YAML value → one Python value) and parse_listen
  schema.py    key() / section(), the schema tree derived from them, the walk that builds Config
  keys.py      every key: the frozen dataclasses, one declared field per key
  checks.py    checks across keys (ports, backoff, http)
  loader.py    load()

How to add a key: add one field to its dataclass in keys.py,

    grace: float = key(30.0, c.duration(0, HOUR), "one line saying what it does")

that is: the default, a converter from convert.py (``c``), a one-line doc.  ``yaml="a.b"`` puts
the key under a nested YAML mapping that has no dataclass of its own (health.backoff.max); a new
nested section is a frozen dataclass of its own, added to its parent with ``section(Cls, doc)``.
Then document the key in etc/localaid.yaml, commented out and showing its default, as the keys
around it are: tests/unit/test_config_keys.py fails until the example and the declaration agree
(every key shown with its default, no key the schema lacks).  Nothing else changes: the loader,
the defaults, ``declared_keys()`` and that test all derive from the field.  A new kind of value
needs a converter in convert.py; a rule between several keys, a check in checks.py.
"""

from __future__ import annotations

# Names not in __all__ are importable from here too, as before the split: the quantity helpers,
# the managed-environment tables, the unit constants, and the schema for tools and tests.
from localaid.config.checks import CHECKS  # noqa: F401
from localaid.config.convert import Converter, parse_listen  # noqa: F401
from localaid.config.keys import (  # noqa: F401
    DAY, DEFAULT_IGNORE_XIDS, DEFAULT_WEBUI_VERSION, HOUR, MINUTE, OLLAMA_MANAGED_ENV, SCHEMA,
    WEBUI_MANAGED_ENV, AdminConfig, BackupConfig, Config, DiskConfig, DevicesConfig, GpuConfig, HealthConfig, MetricsConfig,
    OllamaConfig, WebUIConfig,
)
from localaid.config.loader import DEFAULT_CONF_D, DEFAULT_PATH, load
from localaid.config.schema import Leaf, keys, leaves
from localaid.config.values import ConfigError, FrozenMap, ModelSpec, Problem
from localaid.quantity import (  # noqa: F401
    format_duration, format_size, go_duration, parse_duration, parse_duration_as, parse_size, quote,
)

__all__ = [
    "DEFAULT_PATH", "DEFAULT_CONF_D", "DEFAULT_WEBUI_VERSION", "DEFAULT_IGNORE_XIDS",
    "Problem", "ConfigError", "FrozenMap",
    "ModelSpec", "OllamaConfig", "AdminConfig", "WebUIConfig", "DevicesConfig", "GpuConfig",
    "HealthConfig", "MetricsConfig", "BackupConfig", "DiskConfig", "Config",
    "load", "parse_duration", "parse_size", "parse_listen", "format_duration", "format_size",
]


def declared_keys() -> dict[str, Leaf]:
    """Every key that holds a value, by dotted path, with its converter, doc and default."""
    return leaves(SCHEMA)


def _all_paths() -> list[str]:
    """Every key path of the schema, sections and groups included ("health.backoff.max")."""
    return [p for p, _ in keys(SCHEMA)]
