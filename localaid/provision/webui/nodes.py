"""`localaid doctor` on a UI host (webui.ollama_urls): does each node answer (an https:// node
with the site CA trusted and its token sent, as Open WebUI reaches it), is it reached safely,
and which nodes hold each model Open WebUI is expected to serve (ollama.models and the
embedding model). A model on one node only has no failover; one on none cannot be served at all.

An https:// node without a token file here cannot be used (its proxy refuses every request);
a plain http:// node beyond loopback carries prompts and answers in clear text, with no token."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from localaid import nodekeys, paths
from localaid.policy_tls import canonical_name
from localaid.records import Check

ADD = "localaid node add NAME ADDR"


def expected_models(config) -> tuple[str, ...]:
    names = [m.name for m in config.ollama.models]
    e = config.webui.embedding
    if e.engine == "ollama" and e.model_name not in names:
        names.append(e.model_name)
    return tuple(names)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _trust_checks(urls, keys, name) -> list[Check]:
    """The node token files refused, the https:// nodes without one, the plain http:// ones on the LAN."""
    out = [Check("node token files", False, e, "localaid node add writes them root's, 0600: add the node "
                 "again, or fix the owner and mode") for e in keys.errors]
    for url in urls:
        host = urlsplit(url).hostname or url
        if url.startswith("https://") and nodekeys.node_for(url, keys) is None:
            out.append(Check(f"node {name(url)} token", False,
                             f"{url}: no token for {host} in {paths.TLS_DIR}/nodes: the node refuses Open WebUI",
                             f"on this host: {ADD} (ADDR: {host}), then `localaid node join` on the node"))
        elif url.startswith("http://") and not _loopback(canonical_name(host)):
            out.append(Check(f"node {name(url)} transport", None,
                             f"{url}: plain HTTP on the network: prompts and answers in clear text, no token",
                             f"serve it over TLS with a token: {ADD} here, then https:// in webui.ollama_urls"))
    return out


def _default_client(keys, site_ca: str):
    from localaid.adapters.ollama import OllamaClient

    def make(url):
        if not url.startswith("https://"):
            return OllamaClient(url, timeout=3.0)
        return OllamaClient(url, timeout=3.0, verify=nodekeys.tls_context(site_ca),
                            headers=nodekeys.auth_headers(url, keys))
    return make


def _answer_check(url: str, e, name) -> Check:
    if url.startswith("https://") and getattr(e, "status", None) in (401, 403):
        return Check(f"node {name(url)}", False, f"{url}: token refused (HTTP {e.status})",
                     f"the node was added again or joined with another file: {ADD} here, then "
                     "`localaid node join` on the node")
    if url.startswith("https://") and "CERTIFICATE_VERIFY_FAILED" in str(e):
        return Check(f"node {name(url)}", False, f"{url}: certificate not trusted: {e}",
                     f"is the node's certificate from this host's site CA ({nodekeys.SITE_CA})? {ADD} "
                     "here, then `localaid node join` on the node")
    return Check(f"node {name(url)}", False, f"{url}: {e}",
                 "is the node up, and does its ollama.allow_from include this host?")


def node_checks(config, client_for=None, tls_dir: str = paths.TLS_DIR) -> list[Check]:
    from localaid.adapters.ollama import OllamaError
    from localaid.policy_nodes import name
    urls = config.webui.ollama_urls
    if not (config.webui.enabled and urls):
        return []
    keys = nodekeys.load(tls_dir)
    client_for = client_for or _default_client(keys, f"{tls_dir}/ca.crt")
    checks, have = _trust_checks(urls, keys, name), {}
    for url in urls:
        try:
            with client_for(url) as c:
                have[url] = [m.name for m in c.tags()]
            checks.append(Check(f"node {name(url)}", True, f"{url} answers, {len(have[url])} models"))
        except OllamaError as e:
            checks.append(_answer_check(url, e, name))
    checks += _model_checks(config, urls, have, name)
    return checks


def _model_checks(config, urls, have, name) -> list[Check]:
    from localaid.adapters.ollama import same_model
    checks = []
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
