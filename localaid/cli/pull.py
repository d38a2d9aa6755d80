"""`localaid pull MODEL`: download a model through Ollama's API, with progress.

Talks to Ollama directly, so it works whether or not the localaid daemon runs. On a terminal
one progress bar (size, speed, ETA); otherwise plain lines (logs, pipes).
"""

from __future__ import annotations

import shutil
import sys
import time

from localaid.adapters.ollama import OllamaClient, OllamaError, PullProgress, same_model
from localaid.cli.common import EX_FAIL, EX_OK, clock_text, load_config, size_text


class PullDisplay:
    """Turns pull progress lines into a bar (TTY) or plain lines (every status change and 10 %)."""

    def __init__(self, model: str, out=None, tty: bool | None = None, clock=time.monotonic):
        self.model = model
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.layers: dict[str, tuple[int, int]] = {}
        self.status = ""
        self.samples: list[tuple[float, int]] = []  # (time, bytes done) for the speed
        self.last_decile = -1
        self.last_draw = 0.0
        self.bar_shown = False

    @property
    def totals(self) -> tuple[int, int]:
        return sum(c for c, _ in self.layers.values()), sum(t for _, t in self.layers.values())

    def speed(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def update(self, p: PullProgress) -> None:
        now = self.clock()
        if p.digest and p.total:
            self.layers[p.digest] = (min(p.completed or 0, p.total), p.total)
            done, _ = self.totals
            self.samples.append((now, done))
            self.samples = [s for s in self.samples if now - s[0] <= 10.0] or self.samples[-1:]
            self._progress(now)
            return
        if p.status and p.status != self.status:
            self.status = p.status
            self._line(p.status)

    def _progress(self, now: float) -> None:
        done, total = self.totals
        frac = done / total if total else 0.0
        speed = self.speed()
        eta = f"ETA {clock_text((total - done) / speed)}" if speed > 0 and done < total else ""
        text = f"{size_text(done)}/{size_text(total)}  {speed / 1e6:5.1f} MB/s  {eta}".rstrip()
        if self.tty:
            if now - self.last_draw < 0.1 and done < total:
                return
            self.last_draw = now
            width = shutil.get_terminal_size((80, 20)).columns
            bar_w = max(10, min(40, width - len(text) - 12))
            fill = int(bar_w * frac)
            self.out.write(f"\r\x1b[K{frac * 100:3.0f}% [{'#' * fill}{'.' * (bar_w - fill)}] {text}")
            self.out.flush()
            self.bar_shown = True
        else:
            decile = int(frac * 10)
            if decile != self.last_decile:
                self.last_decile = decile
                self.out.write(f"{self.model}: {frac * 100:.0f}% {text}\n")
                self.out.flush()

    def _line(self, text: str) -> None:
        if self.tty and self.bar_shown:
            self.out.write("\n")
            self.bar_shown = False
        self.out.write(f"{self.model}: {text}\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.bar_shown:
            self.out.write("\n")
        _, total = self.totals
        took = self.clock() - self.start
        size = f" ({size_text(total)})" if total else ""
        self.out.write(f"pulled {self.model}{size} in {clock_text(took)}\n")
        self.out.flush()


def main(args) -> int:
    config = load_config(args)
    model = args.model
    display = PullDisplay(model)
    with OllamaClient(config.ollama.url, timeout=10.0) as client:
        try:
            client.pull(model, display.update)
        except OllamaError as e:
            if display.tty and display.bar_shown:
                print(file=sys.stdout)
            print(f"localaid pull: {e}", file=sys.stderr)
            if "cannot reach" in str(e) or "did not answer" in str(e):
                print("  is ollama.service running? systemctl status ollama; localaid status", file=sys.stderr)
            return EX_FAIL
    display.finish()
    if not any(same_model(model, s.name) for s in config.ollama.models):
        print(f"to keep it loaded and have it pulled on new machines, add it to ollama.models in "
              f"{(config.sources or ('/etc/localaid/localaid.yaml',))[0]}")
    return EX_OK
