"""`localaid doctor` on a UI host (webui.ollama_urls): does each node answer, and which nodes hold
each model Open WebUI is expected to serve (ollama.models and the embedding model). A model on
one node only has no failover; one on none cannot be served at all."""

from __future__ import annotations

from localaid.records import Check


def expected_models(config) -> tuple[str, ...]:
    names = [m.name for m in config.ollama.models]
    e = config.webui.embedding
    if e.engine == "ollama" and e.model_name not in names:
        names.append(e.model_name)
    return tuple(names)


def node_checks(config, client_for=None) -> list[Check]:
    from localaid.adapters.ollama import OllamaClient, OllamaError, same_model
    from localaid.policy_nodes import name
    urls = config.webui.ollama_urls
    if not (config.webui.enabled and urls):
        return []
    client_for = client_for or (lambda url: OllamaClient(url, timeout=3.0))
    checks, have = [], {}
    for url in urls:
        try:
            with client_for(url) as c:
                have[url] = [m.name for m in c.tags()]
            checks.append(Check(f"node {name(url)}", True, f"{url} answers, {len(have[url])} models"))
        except OllamaError as e:
            checks.append(Check(f"node {name(url)}", False, f"{url}: {e}",
                                "is the node up, and does its ollama.allow_from include this host?"))
    for model in expected_models(config):
        on = [name(u) for u, models in have.items() if any(same_model(model, m) for m in models)]
        if not on:
            checks.append(Check(f"model {model}", False, "on no node that answers: Open WebUI cannot serve it",
                                f"pull it on the nodes: localaid pull {model} (on each node)"))
        elif len(on) == 1 and len(urls) > 1:
            checks.append(Check(f"model {model}", None, f"only on {on[0]}: no failover for it",
                                f"pull it on another node: localaid pull {model}"))
        else:
            checks.append(Check(f"model {model}", True, f"on {', '.join(on)}"))
    return checks
