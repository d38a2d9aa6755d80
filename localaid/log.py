"""One journal line per event: stdout with a <N> syslog priority prefix that journald parses.

    log.info("ollama restarted", cause="hung", evidence="3 probes timed out")
    -> <6>ollama restarted cause=hung evidence="3 probes timed out"

No log files of our own: journald keeps what the unit prints.
"""

from __future__ import annotations

import sys
import threading

ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7

_lock = threading.Lock()
stream = sys.stdout  # replaced by tests


_CONTROL = {c: " " for c in range(32) if c != 9} | {127: " "} | {c: " " for c in range(0x80, 0xa0)}
_CONTROL |= {0x2028: " ", 0x2029: " ", 0x85: " "}
_CONTROL |= {c: "\ufffd" for c in range(0xD800, 0xE000)}  # lone surrogates cannot be written as UTF-8


def printable(text: str) -> str:
    """`text` with control characters (newlines, carriage returns, escapes, NUL) turned into
    spaces: a line from Ollama, the install script or a model registry stays one line, so it
    cannot forge a journal field, a second log line or an sd_notify assignment (STATUS=...\n
    MAINPID=...). Lone surrogates (a JSON "\\ud800" from a hostile server) become U+FFFD, which
    UTF-8 can carry."""
    return text.translate(_CONTROL) if not text.isprintable() else text


def _value(v: object) -> str:
    text = printable(str(v))
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_line(priority: int, message: str, fields: dict) -> str:
    extra = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
    message = printable(message)
    return f"<{priority}>{message}" + (f" {extra}" if extra else "")


def emit(priority: int, message: str, **fields: object) -> None:
    line = format_line(priority, message, fields)
    with _lock:
        stream.write(line + "\n")
        stream.flush()


def error(message: str, **fields: object) -> None:
    emit(ERR, message, **fields)


def warning(message: str, **fields: object) -> None:
    emit(WARNING, message, **fields)


def notice(message: str, **fields: object) -> None:
    emit(NOTICE, message, **fields)


def info(message: str, **fields: object) -> None:
    emit(INFO, message, **fields)
