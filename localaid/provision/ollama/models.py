"""Pulling the configured models (ollama.models, and Open WebUI's embedding model: Config.wanted_models)
that Ollama does not have yet."""

from __future__ import annotations

from localaid.provision.job import Reporter
from localaid.quantity import format_size


def client(cfg, timeout: float = 5.0):
    from localaid.adapters.ollama import OllamaClient
    return OllamaClient(cfg.url, timeout=timeout)


def pull_models(cfg, rep: Reporter, models: tuple | None = None) -> list[str]:
    """Pull `models` (default: ollama.models) that Ollama does not have yet; the failures."""
    from localaid.adapters.ollama import OllamaError, PullProgress, same_model
    models = cfg.models if models is None else models
    if not models:
        return []
    failures = []
    with client(cfg, timeout=10.0) as c:
        have = [m.name for m in c.tags()]
        missing = [s.name for s in models if not any(same_model(s.name, h) for h in have)]
        for i, name in enumerate(missing):
            rep.step(f"pulling model {name} ({i + 1}/{len(missing)})")
            layers: dict[str, tuple[int, int]] = {}

            def on_progress(p: PullProgress, name=name):
                if p.digest and p.total:
                    layers[p.digest] = (p.completed or 0, p.total)
                total = sum(t for _, t in layers.values())
                done = sum(d for d, _ in layers.values())
                if total:
                    rep.progress("running", f"pulling model {name}: {format_size(done)} of "
                                            f"{format_size(total)}", done / total)
                else:
                    rep.progress("running", f"pulling model {name}: {p.status}")

            try:
                c.pull(name, on_progress)
                rep.step(f"pulled model {name}")
            except OllamaError as e:
                rep.warn(f"model {name} could not be pulled: {e}")
                failures.append(f"{name}: {e}")
    return failures
