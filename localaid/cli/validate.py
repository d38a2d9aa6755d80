"""Argument types that check a value before any command touches the system.

A version given on the command line becomes part of a path (/var/lib/localaid/webui/venvs/V),
a pip requirement and an install script's environment: only plain version strings pass, so
`--version ..` or `--version '0.12.4/../..'` is a usage error (exit status 2), not a path.
"""

from __future__ import annotations

import argparse
import re

MAX_VERSION = 64

# PEP 440 and semver-like: digits first, then runs of letters and digits joined by one of . - + _
# ("0.12.4", "1.0.0rc1", "0.6.16-rc0", "1.2.post1", "2.0.0+cpu"). No "/", no "..", no blanks,
# no shell metacharacters, nothing that is not ASCII.
_VERSION = re.compile(r"[0-9][0-9A-Za-z]*(?:[.+_-][0-9A-Za-z]+)*")


def version(text: str) -> str:
    """A component version, with a leading "v" dropped ("v0.12.4" is 0.12.4, as Ollama's
    releases are tagged and as the configuration reads it)."""
    value = text[1:] if text[:1] in ("v", "V") and text[1:2].isdigit() else text
    if len(value) > MAX_VERSION:
        raise argparse.ArgumentTypeError(f"invalid version {_shown(text)}: longer than {MAX_VERSION} characters")
    if not value.isascii() or not _VERSION.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid version {_shown(text)}: expected a version such as 0.12.4, 1.0.0rc1 or 0.6.16-rc0 "
            "(digits first, then letters and digits joined by one of . - + _)")
    return value


def _shown(text: str) -> str:
    """The value as typed, safe to print: control characters escaped, long values cut."""
    shown = ascii(text) if not text.isprintable() or not text.isascii() else repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."
