"""policy_tls: the names a local-CA server certificate carries, when it is issued again or
renewed, and the expiry words STATUS shows."""

import calendar
import time

import pytest

from localaid.policy_tls import (
    DAY, LIFETIME, RENEW_BEFORE, WARN_BEFORE, CertInfo, canonical_name, expiry_note, server_cert_action,
    wanted_names)

NOW = float(calendar.timegm((2027, 1, 1, 12, 0, 0)))
PROBE = ("localhost", "127.0.0.1", "::1")


def cert(names=("gpu-box", "localhost"), issued=NOW - 10 * DAY, lifetime=LIFETIME) -> CertInfo:
    return CertInfo(names=tuple(names), not_before=issued - 60, not_after=issued + lifetime,
                    fingerprint="AB:CD", issuer="CN=localaid CA gpu-box", subject="CN=gpu-box", is_ca=False)


def test_the_windows_are_the_documented_ones():
    assert (LIFETIME, RENEW_BEFORE, WARN_BEFORE) == (90 * 86400.0, 30 * 86400.0, 14 * 86400.0)
    assert WARN_BEFORE < RENEW_BEFORE < LIFETIME


# --- names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, canonical", [
    ("::0:1", "::1"), ("[fe80::1%eth0]", "fe80::1"), ("2001:DB8::0001", "2001:db8::1"),
    ("192.168.1.5", "192.168.1.5"), ("Box.Example.", "box.example"),
    ("*.LAN", "*.lan"),
])
def test_names_are_compared_in_canonical_form(raw, canonical):
    assert canonical_name(raw) == canonical


def test_default_names_on_a_wildcard_listen_carry_the_hosts_addresses():
    names = wanted_names((), "gpu-box", "0.0.0.0", ("192.168.1.5", "127.0.0.1", "fe80::1%eth0", "192.168.1.5"))
    assert names == ("gpu-box", "gpu-box.local", "192.168.1.5", "fe80::1") + PROBE
    assert wanted_names((), "gpu-box", "::", ("10.0.0.2",)) == ("gpu-box", "gpu-box.local", "10.0.0.2") + PROBE
    assert wanted_names((), "gpu-box", "[::]", ("10.0.0.2",))[2] == "10.0.0.2"


def test_a_specific_listen_address_is_carried_and_other_addresses_are_not():
    names = wanted_names((), "gpu-box", "192.168.1.5", ("192.168.1.5", "10.0.0.2"))
    assert names == ("gpu-box", "gpu-box.local") + PROBE + ("192.168.1.5",)
    assert "10.0.0.2" not in names


def test_a_loopback_listen_adds_no_address():
    assert wanted_names((), "gpu-box", "127.0.0.1", ("10.0.0.2",)) == ("gpu-box", "gpu-box.local") + PROBE


def test_a_dotted_hostname_gets_no_local_suffix_and_localhost_is_not_repeated():
    assert wanted_names((), "box.example.org", "127.0.0.1", ()) == ("box.example.org",) + PROBE
    assert wanted_names((), "localhost", "127.0.0.1", ()) == PROBE
    assert wanted_names((), "", "127.0.0.1", ()) == PROBE


def test_configured_names_replace_the_guess_but_keep_the_probes_names():
    names = wanted_names(("chat.example", "192.168.1.5", "CHAT.example", "::ffff:0:1"),
                         "gpu-box", "0.0.0.0", ("10.0.0.2",))
    assert names == ("chat.example", "192.168.1.5", "::ffff:0:1") + PROBE
    assert "gpu-box" not in names and "10.0.0.2" not in names
    # the probe connects to a specific listen address: it is always carried
    assert wanted_names(("chat.example",), "gpu-box", "10.0.0.2", ())[-1] == "10.0.0.2"
    # the admin's order comes first: the first name is the certificate's subject
    assert wanted_names(("localhost", "chat.example"), "h", "0.0.0.0", ())[:2] == ("localhost", "chat.example")


# --- the server certificate's life -------------------------------------------------------------------

def test_no_certificate_is_issued():
    assert server_cert_action(None, PROBE, True, NOW) == ("issue", "no server certificate yet")


def test_a_fresh_certificate_with_the_same_names_in_another_order_is_kept():
    c = cert(names=("localhost", "gpu-box"))
    assert server_cert_action(c, ("gpu-box", "localhost"), True, NOW) == ("keep", "")
    assert server_cert_action(c, ("GPU-BOX", "localhost."), True, NOW) == ("keep", "")


def test_names_changed_says_what_is_added_and_dropped():
    c = cert(names=("old.example", "localhost"))
    assert server_cert_action(c, ("localhost", "192.168.1.5"), True, NOW) == \
        ("reissue", "names changed: adds 192.168.1.5, drops old.example")
    assert server_cert_action(c, ("old.example", "localhost", "a", "b"), True, NOW) == \
        ("reissue", "names changed: adds a, b")
    assert server_cert_action(c, ("localhost",), True, NOW) == ("reissue", "names changed: drops old.example")


def test_a_certificate_from_another_ca_is_reissued_before_anything_else():
    expired_and_renamed = cert(names=("x",), issued=NOW - 200 * DAY)
    assert server_cert_action(expired_and_renamed, ("y",), False, NOW) == \
        ("reissue", "not issued by this host's CA")


def test_renewal_starts_exactly_renew_before_the_end():
    c = cert()
    names = c.names
    start = c.not_after - RENEW_BEFORE
    assert server_cert_action(c, names, True, start - 1) == ("keep", "")
    action, why = server_cert_action(c, names, True, start)
    assert action == "renew" and why.startswith("expires in 30 days (")
    assert server_cert_action(c, names, True, c.not_after - 12.5 * DAY) == \
        ("renew", f"expires in 12 days ({_day(c.not_after)})")


def test_an_expired_certificate_is_renewed_and_says_since_when():
    c = cert()
    assert server_cert_action(c, c.names, True, c.not_after) == \
        ("renew", f"expired less than an hour ago ({_day(c.not_after)})")
    assert server_cert_action(c, c.names, True, c.not_after + 2 * DAY + 5) == \
        ("renew", f"expired 2 days ago ({_day(c.not_after)})")
    assert server_cert_action(c, c.names, True, c.not_after - 5 * 3600) == \
        ("renew", f"expires in 5 hours ({_day(c.not_after)})")


def test_a_certificate_not_valid_yet_is_reissued():
    c = cert(issued=NOW + DAY)
    action, why = server_cert_action(c, c.names, True, NOW)
    assert action == "reissue" and "not valid before 2027-01-02" in why


def test_expiry_note_from_warn_before_on():
    c = cert()
    assert expiry_note(None, NOW) is None
    assert expiry_note(c, c.not_after - WARN_BEFORE - 1) is None
    assert expiry_note(c, c.not_after - WARN_BEFORE) == "certificate expires in 14 days"
    assert expiry_note(c, c.not_after - 5 * DAY - 10) == "certificate expires in 5 days"
    assert expiry_note(c, c.not_after - 1 * DAY) == "certificate expires in 1 day"
    assert expiry_note(c, c.not_after - 7200) == "certificate expires in 2 hours"
    assert expiry_note(c, c.not_after + 2 * DAY) == "certificate expired 2 days ago"
    assert expiry_note(c, c.not_after + 30) == "certificate expired less than an hour ago"


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))
