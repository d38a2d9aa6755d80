"""Sizes and durations as people write and read them: one parser and one formatter each.

Pure functions, no I/O: the configuration, the CLI, status lines and provisioning all use these,
so "5 min" or "1.2 GB" means the same everywhere.
"""

from __future__ import annotations

import json
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


def quote(value: Any) -> str:
    """How a value a user wrote is shown in a message: strings quoted, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > 60:
            value = value[:57] + "..."
        return json.dumps(value, ensure_ascii=False)
    return str(value)


_DURATION_UNITS = {
    "ms": 0.001,
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}
_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_DURATION = re.compile(rf"(?:\s*{_NUM}\s*[a-z]+)+\s*")
_DURATION_PART = re.compile(rf"({_NUM})\s*([a-z]+)")
_BARE_NUMBER = re.compile(rf"[-+]?{_NUM}")


def parse_duration_as(value: Any, example: str) -> float:
    expect = f"expected a duration such as {example}, got {quote(value)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(expect)
    if text.startswith("-") and text != "-0":
        raise ValueError(f"{expect} (durations cannot be negative)")
    if _BARE_NUMBER.fullmatch(text):
        if float(text) == 0:
            return 0.0
        raise ValueError(f'{expect} (add a unit, e.g. "{text.lstrip("+")}s")')
    if not _DURATION.fullmatch(text):
        raise ValueError(expect)
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        if unit not in _DURATION_UNITS:
            raise ValueError(f'{expect} (unknown unit "{unit}"; use ms, s, m, h or d)')
        total += float(number) * _DURATION_UNITS[unit]
    return total


def parse_duration(text: Any) -> float:
    """"500ms", "2s", "5m", "1h30m", "1 min 30 s", "2d" → seconds.  0 needs no unit; other bare
    numbers are refused.  Raises ValueError with a message fit for the user."""
    return parse_duration_as(text, '"2s"')


def _trim(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def format_duration(seconds: float) -> str:
    """Human form: "500 ms", "2.5 s", "45 s", "2 min", "1 min 30 s", "1 h 30 min", "2 d 3 h".
    parse_duration() reads it back (to the displayed precision)."""
    if math.isinf(seconds):
        return "forever"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0 s"
    if seconds < 0.9995:
        ms = seconds * 1000
        return f"{_trim(ms) if ms < 9.95 else round(ms)} ms"
    if seconds < 9.95:
        return f"{_trim(seconds)} s"
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    if round(seconds) < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min" + (f" {s} s" if s else "")
    if round(seconds / 60) < 24 * 60:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h" + (f" {m} min" if m else "")
    d, h = divmod(round(seconds / 3600), 24)
    return f"{d} d" + (f" {h} h" if h else "")


def go_duration(seconds: float) -> str:
    """Seconds → a duration Go's time.ParseDuration (and so Ollama) accepts: "1h30m", "500ms"."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(rf"\s*({_NUM})\s*([A-Za-z]*)\s*")


def parse_size(text: Any) -> int:
    """"512MB", "5.2GB" (powers of 1000), "12GiB" (powers of 1024), a bare integer (bytes) → bytes.
    Raises ValueError with a message fit for the user."""
    expect = f'expected a size such as "512MB" or "12GiB", got {quote(text)}'
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{expect} (sizes cannot be negative)")
        return text
    if not isinstance(text, str):
        raise ValueError(expect)
    m = _SIZE.fullmatch(text)
    if not m:
        if text.strip().startswith("-"):
            raise ValueError(f"{expect} (sizes cannot be negative)")
        raise ValueError(expect)
    number, unit = m.group(1), m.group(2).lower()
    if unit in ("k", "m", "g", "t"):
        u = unit.upper()
        raise ValueError(f'{expect} (write "{number}{u}B" for powers of 1000 '
                         f'or "{number}{u}iB" for powers of 1024)')
    if unit not in _SIZE_UNITS:
        raise ValueError(f'{expect} (unknown unit "{m.group(2)}"; use B, kB, MB, GB, TB, '
                         f'KiB, MiB, GiB or TiB)')
    if not unit and "." in number:
        raise ValueError(f"{expect} (add a unit to a fractional size)")
    return int((Decimal(number) * _SIZE_UNITS[unit]).to_integral_value(ROUND_HALF_UP))


def format_size(n: int, binary: bool = False) -> str:
    """"512 B", "274 MB", "1.2 GB", "12 GB" (powers of 1000, as `ollama list` shows model sizes);
    binary=True gives "12 GiB" (as nvidia-smi counts VRAM)."""
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB")) if binary else \
                  (1000, ("B", "kB", "MB", "GB", "TB", "PB"))
    if n < 0:
        return "-" + format_size(-n, binary)
    value, i = float(n), 0
    while i < len(units) - 1 and round(value, 1 if value < 10 else 0) >= base:
        value, i = value / base, i + 1
    if i == 0:
        return f"{n} B"
    return f"{_trim(value) if round(value, 1) < 10 else round(value)} {units[i]}"


def fmt_seconds(s: float) -> str:
    """A span for STATUS: "40 s", "3 min", "1.5 h"."""
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
