"""A UI host's Ollama nodes (policy_nodes): taken out of Open WebUI's use when they stop
answering, put back when they answer again, held out longer while they flap."""

from dataclasses import replace

import pytest
from types import MappingProxyType

from localaid import policy
from localaid.config import Config
from localaid.records import (
    WEBUI, GpuObs, History, NodeObs, Observation, Probe, ServiceObs, UnitState)

OK = Probe(True, 0.01, 200)
HUNG = Probe(False, 0.5, None, "timeout after 0.5 s")
REFUSED = Probe(False, 0.0, None, "connection refused")
A, B = "http://gpu-a:11434", "http://gpu-b:11434"


def cfg() -> Config:
    c = Config()
    return replace(c, ollama=replace(c.ollama, enabled=False), webui=replace(c.webui, ollama_urls=(A, B)))


def observe(now, a=OK, b=OK, in_use=(True, True), in_flight=(), error=None) -> Observation:
    u = UnitState("open-webui.service", load_state="loaded", active_state="active", sub_state="running",
                  result="success")
    return Observation(now=now, services=MappingProxyType({WEBUI: ServiceObs(WEBUI, u, None, OK, ready=OK)}),
                       gpu=GpuObs(state="none"), nodes=(NodeObs(A, a, in_use[0]), NodeObs(B, b, in_use[1])),
                       nodes_error=error, in_flight=frozenset(in_flight))


def run(observations, c=None):
    c, hist, out = c or cfg(), History(), []
    for o in observations:
        d = policy.decide(c, o, hist)
        hist = d.history
        out.append(d)
    return out


def node_actions(d):
    return [(a.kind, a.target) for a in d.actions if a.kind.startswith("node-")]


def test_all_nodes_answering_nothing_to_do():
    d = run([observe(100.0)])[0]
    assert node_actions(d) == [] and d.healthy
    assert "open-webui ok :3000 · nodes 2/2 ok" in d.status_line


def test_a_node_that_stops_answering_is_taken_out_after_the_failures_and_put_back_when_it_answers():
    ds = run([observe(100.0), observe(101.0, b=HUNG), observe(101.5, b=HUNG), observe(102.0, b=HUNG),
              observe(103.0, b=REFUSED, in_use=(True, False)),  # Open WebUI no longer uses it
              observe(140.0, b=OK, in_use=(True, False)), observe(141.0, b=OK, in_use=(True, False)),
              observe(142.0, b=OK, in_use=(True, True))])
    assert [node_actions(d) for d in ds[:3]] == [[], [], []]
    assert node_actions(ds[3]) == [("node-disable", B)]  # the third failed probe: out
    assert ds[1].recheck == 0.0  # a timed-out probe is repeated at once
    assert "nodes 1/2 ok (gpu-b out 1 s: connection refused)" in ds[4].status_line
    assert ds[4].healthy  # gpu-a still serves
    assert any("node gpu-b: timeout after 0.5 s: taken out" in n for n in ds[3].notes)
    assert node_actions(ds[5]) == []  # one answer is not yet enough
    assert node_actions(ds[6]) == [("node-enable", B)]
    assert any("back in use" in n for n in ds[6].notes)
    assert "nodes 2/2 ok" in ds[7].status_line and node_actions(ds[7]) == []


def simulate(probes_b, start=100.0):
    """One observation a second; Open WebUI's `enable` flag follows the actions (as its API does)."""
    c, hist, in_use, out = cfg(), History(), True, []
    for i, pb in enumerate(probes_b):
        d = policy.decide(c, observe(start + i, b=pb, in_use=(True, in_use)), hist)
        hist = d.history
        for kind, target in node_actions(d):
            in_use = kind == "node-enable"
        out.append(d)
    return out


def test_a_flapping_node_is_held_out_with_backoff():
    cycle = [REFUSED] * 3 + [OK] * 37  # fails, out, answers; then fails again soon after it is back
    ds = simulate(cycle * 4)
    back = [i for i, d in enumerate(ds) if ("node-enable", B) in node_actions(d)]
    out = [i for i, d in enumerate(ds) if ("node-disable", B) in node_actions(d)]
    assert out == [2, 42, 82, 122]
    gaps = [b - o for b, o in zip(back, out)]
    assert gaps == [2, 2, 15, 30], gaps  # two answers; from the third outage on held out 15 s, 30 s
    assert ds[-1].history.nodes[B].hold == 30.0
    assert any("held out 15 s once it answers (3 outages in 10 min)" in n for d in ds for n in d.notes)


def test_a_connection_the_admin_switched_off_stays_off():
    ds = run([observe(100.0, in_use=(True, False)), observe(101.0, in_use=(True, False))])
    assert node_actions(ds[1]) == []


def test_nothing_is_sent_while_a_change_is_in_flight_or_settings_unreadable():
    ds = run([observe(100.0), *(observe(100.0 + i, b=REFUSED, in_flight=(f"node:{B}",)) for i in (1, 2, 3))])
    assert node_actions(ds[-1]) == []
    d = run([observe(100.0, b=REFUSED, in_use=(None, None), error="admin sign-in refused (HTTP 400)")] * 4)[-1]
    assert node_actions(d) == [] and "cannot be managed: admin sign-in refused" in d.status_line


def test_every_node_out_is_unhealthy():
    ds = run([observe(100.0 + i, a=REFUSED, b=REFUSED) for i in range(4)])
    assert not ds[-1].healthy and "nodes 0/2 ok" in ds[-1].status_line


def test_open_webuis_stored_list_is_brought_to_the_configured_one_first():
    """Open WebUI keeps the connections it was first started with: a changed webui.ollama_urls
    is written through its admin API before any node is switched."""
    o = replace(observe(100.0, b=REFUSED, in_use=(True, None)), nodes_differ=True)
    ds = run([o, replace(o, now=101.0), replace(o, now=102.0, in_flight=frozenset({"nodes:sync"}))])
    assert [a.kind for a in ds[0].actions if a.kind.startswith("node")] == ["nodes-sync"]
    assert node_actions(ds[2]) == []  # nothing else while it is written


def test_a_connection_localaid_switched_off_before_a_restart_is_put_back():
    """localaid marks what it switches off in the connection's own settings in Open WebUI: a new
    localaid (after a restart or a reboot) puts it back once the node answers."""
    def marked(now, b):
        o = observe(now, b=b, in_use=(True, False))
        return replace(o, nodes=(o.nodes[0], replace(o.nodes[1], ours=True)))
    ds = run([marked(100.0, REFUSED), marked(101.0, OK), marked(102.0, OK)])
    assert "nodes 1/2 ok (gpu-b out" in ds[0].status_line and node_actions(ds[0]) == []
    assert node_actions(ds[2]) == [("node-enable", B)]


TA, TB = "https://gpu-a:11443", "https://gpu-b:11443"
UNAUTHORISED = Probe(False, 0.01, 401, "HTTP 401")
FORBIDDEN = Probe(False, 0.01, 403, "HTTP 403")
UNTRUSTED = Probe(False, 0.01, None, "certificate not trusted: self-signed certificate in certificate chain")


def tls_cfg() -> Config:
    c = cfg()
    return replace(c, webui=replace(c.webui, ollama_urls=(TA, TB)))


def tls_simulate(probes_b, start=100.0):
    """As simulate(), with https:// nodes behind their tokens."""
    c, hist, in_use, out = tls_cfg(), History(), True, []
    for i, pb in enumerate(probes_b):
        o = observe(start + i, b=pb, in_use=(True, in_use))
        o = replace(o, nodes=(replace(o.nodes[0], url=TA), replace(o.nodes[1], url=TB)))
        d = policy.decide(c, o, hist)
        hist = d.history
        for kind, target in node_actions(d):
            assert target == TB
            in_use = kind == "node-enable"
        out.append(d)
    return out


@pytest.mark.parametrize("probe, words", [
    (UNAUTHORISED, "token refused (HTTP 401)"), (FORBIDDEN, "token refused (HTTP 403)"),
    (UNTRUSTED, "certificate not trusted: self-signed certificate in certificate chain")])
def test_a_node_refusing_the_token_or_not_trusted_is_taken_out_and_put_back(probe, words):
    """A node whose proxy refuses this host's token (none, or an old one after `localaid node add`
    again) or whose certificate the site CA did not sign fails like one that does not answer:
    out after health.failures probes, with the reason in STATUS, back once it answers."""
    ds = tls_simulate([OK, probe, probe, probe, probe, OK, OK, OK])
    assert [node_actions(d) for d in ds[:3]] == [[], [], []]
    assert node_actions(ds[3]) == [("node-disable", TB)]
    assert f"nodes 1/2 ok (gpu-b out 1 s: {words})" in ds[4].status_line  # 11443: the name alone
    assert any(f"node gpu-b: {words}: taken out" in n for n in ds[3].notes)
    assert node_actions(ds[6]) == [("node-enable", TB)]
    assert "nodes 2/2 ok" in ds[7].status_line


def test_a_changed_token_in_open_webui_is_written_before_anything_else():
    """A key that is not the node's token makes the observation differ: the connections are
    written again (with the tokens) before any node is switched."""
    o = observe(100.0, b=UNAUTHORISED, in_use=(True, True))
    o = replace(o, nodes=(replace(o.nodes[0], url=TA), replace(o.nodes[1], url=TB)), nodes_differ=True)
    d = policy.decide(tls_cfg(), o, History())
    assert [a.kind for a in d.actions if a.kind.startswith("node")] == ["nodes-sync"]
    assert "nodes' tokens" in next(a.evidence for a in d.actions if a.kind == "nodes-sync")


def test_node_names_in_status():
    from localaid.policy_nodes import name
    assert [name(u) for u in ("http://gpu-a:11434", "https://gpu-a:11443", "https://gpu-a:11434",
                              "http://gpu-a:11443", "https://gpu-a:8443", "https://[fe80::1]:11443")] == \
        ["gpu-a", "gpu-a", "gpu-a", "gpu-a:11443", "gpu-a:8443", "fe80::1"]
