"""How far a model pull is, how fast it goes and how long it has left: one reading of Ollama's
pull progress lines, for `localaid pull`'s bar and for STATUS while the set-up job pulls.

Ollama reports each layer (blob) of a model as it downloads it: {"digest", "total",
"completed"}; the model's size is the sum of the layers seen so far (the large weights layer
comes first). The speed is measured over the last WINDOW seconds, so the time left follows a
link that slows down or speeds up.
"""

from __future__ import annotations

import time

from localaid.quantity import fmt_seconds, format_size

WINDOW = 10.0


class PullMeter:
    def __init__(self, model: str, clock=time.monotonic):
        self.model = model
        self.clock = clock
        self.start = clock()
        self.layers: dict[str, tuple[int, int]] = {}  # digest -> (completed, total)
        self.samples: list[tuple[float, int]] = []  # (time, bytes done)

    def add(self, digest: str | None, total: int | None, completed: int | None) -> bool:
        """Count one progress line; False when it says nothing about bytes (a status line)."""
        if not digest or not total:
            return False
        self.layers[digest] = (min(completed or 0, total), total)
        now = self.clock()
        self.samples.append((now, self.done))
        self.samples = [s for s in self.samples if now - s[0] <= WINDOW] or self.samples[-1:]
        return True

    @property
    def done(self) -> int:
        return sum(c for c, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def speed(self) -> float:
        """Bytes a second over the last WINDOW seconds (0 until two readings apart)."""
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def left(self) -> float | None:
        """Seconds left at the current speed; None while it cannot be said."""
        speed = self.speed()
        return (self.total - self.done) / speed if speed > 0 and self.done < self.total else None

    def words(self) -> str:
        """"pulling qwen3:8b 42 % of 5.2 GB, ~3 min" (STATUS and the set-up job's progress)."""
        if not self.total:
            return f"pulling {self.model}"
        left = self.left()
        eta = f", ~{fmt_seconds(max(1.0, left))}" if left is not None else ""
        return f"pulling {self.model} {self.fraction * 100:.0f} % of {format_size(self.total)}{eta}"
