"""`localaid pull MODEL`: download a model through Ollama's API, with progress.

Talks to Ollama directly, so it works whether or not the localaid daemon runs. On a terminal
one progress bar (size, speed, ETA); otherwise plain lines (logs, pipes). A model that would
not leave 1 GB free on the models' disk is stopped as soon as its size is known.
"""

from __future__ import annotations

import shutil
import sys
import time

from localaid.adapters.ollama import OllamaClient, OllamaError, PullProgress, same_model
from localaid.cli.common import EX_FAIL, EX_OK, clock_text, load_config, size_text
from localaid.pullmeter import PullMeter


class PullDisplay:
    """Turns pull progress lines into a bar (TTY) or plain lines (every status change and 10 %)."""

    def __init__(self, model: str, out=None, tty: bool | None = None, clock=time.monotonic):
        self.model = model
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.clock = clock
        self.meter = PullMeter(model, clock)
        self.status = ""
        self.last_decile = -1
        self.last_draw = 0.0
        self.bar_shown = False

    @property
    def totals(self) -> tuple[int, int]:
        return self.meter.done, self.meter.total

    def update(self, p: PullProgress) -> None:
        if self.meter.add(p.digest, p.total, p.completed):
            self._progress(self.clock())
            return
        if p.status and p.status != self.status:
            self.status = p.status
            self._line(p.status)

    def _progress(self, now: float) -> None:
        done, total = self.totals
        frac = self.meter.fraction
        speed, left = self.meter.speed(), self.meter.left()
        eta = f"ETA {clock_text(left)}" if left is not None else ""
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
        took = self.clock() - self.meter.start
        size = f" ({size_text(total)})" if total else ""
        self.out.write(f"pulled {self.model}{size} in {clock_text(took)}\n")
        self.out.flush()


def main(args) -> int:
    from localaid.provision.ollama.models import NoRoom, room_before, room_for_layers
    config = load_config(args)
    model = args.model
    display = PullDisplay(model)

    def update(p: PullProgress) -> None:  # the disk checked as soon as each layer's size is known
        known = len(display.meter.layers)
        display.update(p)
        room_for_layers(config.ollama, display.meter, known)

    with OllamaClient(config.ollama.url, timeout=10.0) as client:
        try:
            room_before(config.ollama, model)
            client.pull(model, update)
        except (NoRoom, OSError) as e:
            if display.tty and display.bar_shown:
                print(file=sys.stdout)
            print(f"localaid pull: {e}", file=sys.stderr)
            return EX_FAIL
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
