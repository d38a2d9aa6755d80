"""Plain values shared by every part of the configuration: problems and the small frozen types."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration: FILE[:LINE]: [KEY: ]REASON."""
    file: str
    line: int | None
    key: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class ConfigError(Exception):
    """Every problem found in one load(), one per line when printed."""

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


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str                      # normalised: always has a tag ("llama3" → "llama3:latest")
    keep_warm: bool = True
