"""The fake Ollama's model runner: one child process per loaded model, as the real server has.

The real server starts a runner process when it loads a model and keeps it until the model is
unloaded: from release 0.30 the bundled `lib/ollama/llama-server` (llama.cpp's server), before
that `ollama runner` (its own binary). Generation happens in that child, not in the server that
answers `/`, `/api/version` and `/api/ps`. This double keeps that shape, so what localaid sees
of a runner (a second process in ollama.service's cgroup, its CPU time, its name) is what it
sees of the real one:

- started by fake_ollama_api.State.load (`llama-server --model M --port 0` from 0.30, else
  `ollama runner --model M --port 0`), its name (/proc/PID/comm) set to match;
- one request at a time (the server queues the rest, as OLLAMA_NUM_PARALLEL=1 does): a JSON line
  on stdin {"tokens": N, "rate": tokens per second (0: as fast as it computes), "prompt_cpu": CPU
  seconds for the prompt, "cpu": CPU seconds per token, "wedge_after": K or null, "words": [...]};
  each token a line `T "text"` on stdout, then `D`;
- every token costs real CPU time (a busy loop on this thread's CPU clock, so that it costs
  the same CPU when the machine is loaded), paced to `rate` by sleeping;
- wedged (`wedge_after`): after K tokens it stops for good, with no CPU, no output and its
  request never answered (a deadlocked runner), while the server stays responsive;
- it ends when its stdin closes (the server exited) or on a signal.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

PR_SET_NAME = 15


def set_name(name: str) -> None:
    """/proc/self/comm: what `ps` and localaid's journal lines call the process."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def burn(seconds: float) -> None:
    """Use `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1


def run(job: dict, out) -> None:
    tokens = max(0, int(job.get("tokens", 2)))
    rate = float(job.get("rate") or 0)
    cpu = float(job.get("cpu") or 0)
    wedge = min(int(job["wedge_after"]), tokens) if job.get("wedge_after") is not None else None
    words = job.get("words") or ["fake", " answer"]
    start = time.monotonic()
    burn(float(job.get("prompt_cpu") or 0))  # the prompt's evaluation
    for i in range(tokens + 1):
        if i == wedge:
            while True:  # wedged: nothing more, ever
                time.sleep(3600)
        if i == tokens:
            break
        burn(cpu)
        if rate:
            pause = start + (i + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        out.write("T " + json.dumps(words[i % len(words)]) + "\n")
        out.flush()
    out.write("D\n")
    out.flush()


def main(argv: list[str], name: str) -> int:
    """`llama-server|ollama runner --model M --port P`: serve jobs from stdin until it closes."""
    set_name(name)
    for line in sys.stdin:
        try:
            job = json.loads(line)
        except ValueError:
            continue
        run(job if isinstance(job, dict) else {}, sys.stdout)
    return 0
