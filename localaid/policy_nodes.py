"""Failover for a UI host's Ollama nodes (webui.ollama_urls): pure, no I/O.

Open WebUI spreads requests over its Ollama connections at random, with no health check: a
node that is down stalls or fails the chats sent to it. localaid probes every node like the
local Ollama (health.interval, .timeout, .failures) and, through Open WebUI's own admin API,
switches the connection of a failed node off (its `enable` flag; the order of the connections
is kept) and on again once it answers:

    ok ──(failures probes fail)──> out: action node-disable
    out ──(RETURN_OKS probes answer, and its hold has passed)──> ok: action node-enable

A node taken out for the FLAP_COUNT-th time within FLAP_WINDOW is flapping: once it answers again
it is held out FLAP_HOLD_MIN, doubling with each further outage in the window, up to FLAP_HOLD_MAX. Only connections localaid switched off are
switched on again (an administrator's own choice stands), and nothing on another host is ever
restarted. With interval 1 s, timeout 0.5 s and 3 failures, a node that stops answering is out
of use about 2.5 s after (timeouts are re-probed at once, policy._recheck) and back about 2 s
after it answers.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from urllib.parse import urlsplit

from localaid.quantity import fmt_seconds
from localaid.records import Action, NodeHistory, Observation

RETURN_OKS = 2  # answered probes in a row before a node is used again
FLAP_WINDOW, FLAP_COUNT = 600.0, 3  # a third outage within 10 minutes is flapping
FLAP_HOLD_MIN, FLAP_HOLD_MAX = 15.0, 600.0
NODE_KINDS = ("node-disable", "node-enable")
NODE_PORTS = {"http": (None, 11434), "https": (None, 11434, 11443)}  # Ollama's; a node's over TLS


def name(url: str) -> str:
    """What STATUS calls a node: its host ("gpu-b"), with the port when it is not Ollama's (or,
    over https://, the port a GPU node serves it on)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return host if parts.port in NODE_PORTS.get(parts.scheme, (None,)) else f"{host}:{parts.port}"


def reason(probe) -> str:
    """Why a node's probe failed, in STATUS's words: a 401 or 403 is the node's proxy refusing
    this host's token (none, or an old one); the adapter's words otherwise ("certificate not
    trusted: …", "timeout after 0.5 s", "connection refused")."""
    if probe.status in (401, 403):
        return f"token refused (HTTP {probe.status})"
    return probe.error or f"HTTP {probe.status}"


def _step(h: NodeHistory, ok: bool, error: str, now: float, failures: int) -> tuple[NodeHistory, str | None]:
    """The node's next history, and a note when it changed state."""
    if ok:
        h = replace(h, failures=0, oks=h.oks + 1, reason="")
        if h.state == "failing":
            return replace(h, state="ok", since=None), None
        if h.state == "out" and h.oks >= RETURN_OKS and now >= (h.since or now) + h.hold:
            return replace(h, state="ok", since=None, returned_at=now), "answers again: back in use"
        return h, None
    h = replace(h, failures=h.failures + 1, oks=0, reason=error,
                since=h.since if h.state != "ok" else now)
    if h.state == "out":
        return h, None
    if h.failures < failures:
        return replace(h, state="failing"), None
    outages = tuple(t for t in h.outages if now - t < FLAP_WINDOW) + (now,)
    extra = len(outages) - FLAP_COUNT
    hold = min(FLAP_HOLD_MAX, FLAP_HOLD_MIN * 2 ** extra) if extra >= 0 else 0.0
    note = f"{error}: taken out of Open WebUI's use" + (
        f", held out {fmt_seconds(hold)} once it answers ({len(outages)} outages in "
        f"{fmt_seconds(FLAP_WINDOW)})" if hold else "")
    return replace(h, state="out", since=now, hold=hold, outages=outages), note


def decide_nodes(config, obs: Observation, hist, now: float, in_flight=frozenset()):
    """(actions, history, STATUS fragment, notes) for the UI host's nodes; nothing without nodes."""
    if not (config.webui.enabled and config.webui.ollama_urls):
        return [], MappingProxyType({}), "", []
    actions, notes, out = [], [], {}
    syncing = obs.nodes_differ or "nodes:sync" in in_flight
    if obs.nodes_differ and "nodes:sync" not in in_flight:
        # Open WebUI keeps the list it was first started with (settings in its database)
        actions.append(Action("nodes-sync", "open-webui", "config", "Open WebUI's Ollama connections are not "
                              "webui.ollama_urls with the nodes' tokens"))
    for node in obs.nodes:
        h = hist.get(node.url, NodeHistory())
        if node.ours and not h.ours:  # switched off by an earlier localaid (restart, reboot)
            h = replace(h, ours=True, state="out", since=h.since or now, reason=h.reason or "switched off earlier")
        if node.probe is not None:
            h, note = _step(h, node.probe.ok, reason(node.probe), now, config.health.failures)
            if note:
                notes.append(f"node {name(node.url)}: {note}")
        want = h.state != "out"
        busy = f"node:{node.url}" in in_flight or syncing
        if node.in_use is not None and not busy:
            if node.in_use and not want:
                actions.append(Action("node-disable", node.url, "node-down", h.reason or "probes failed"))
                h = replace(h, ours=True)
            elif not node.in_use and want and h.ours:
                actions.append(Action("node-enable", node.url, "node-up", f"{RETURN_OKS} probes answered"))
            elif node.in_use and want:
                h = replace(h, ours=False)
        out[node.url] = h
    return actions, MappingProxyType(out), _fragment(obs, out, now), notes


def _fragment(obs: Observation, nodes, now: float) -> str:
    """ "nodes 2/3 ok (gpu-b out 40 s: timeout after 0.5 s)" """
    total = len(obs.nodes)
    good = sum(1 for n in obs.nodes if nodes[n.url].state != "out")
    bad = [f"{name(n.url)} out {fmt_seconds(now - (nodes[n.url].since or now))}: {nodes[n.url].reason}"
           for n in obs.nodes if nodes[n.url].state == "out"]
    text = f"nodes {good}/{total} ok" + (f" ({'; '.join(bad)})" if bad else "")
    if obs.nodes_error:
        text += f" (Open WebUI's connections cannot be managed: {obs.nodes_error})"
    return text
