"""Certificates for `webui.tls` (pure): which names a server certificate carries, when it is
issued again, and what STATUS says as its end nears.

The local CA (localaid/provision/https/certs.py makes it and reads certificates into CertInfo)
signs a server certificate LIFETIME long. It is renewed RENEW_BEFORE its end, so a host that
is off or broken for a while still has weeks of margin; STATUS and doctor warn from
WARN_BEFORE on, when renewal has failed for two weeks.

Names: a browser checks the name or address it was given against the certificate's
subjectAltName, so the certificate must carry every name a user may type. The names localaid's
own probe uses (localhost, 127.0.0.1, ::1, and the listen address when it is a specific one:
the probe connects where nginx listens) are always on it, also when the admin lists names, so
that the probe verifies the certificate as any client does instead of skipping the check.
Names are compared as sets: a reordering is no change.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from localaid.records import TlsObs

DAY = 86400.0
LIFETIME = 90 * DAY  # a server certificate's validity
RENEW_BEFORE = 30 * DAY  # renewed this long before its end
WARN_BEFORE = 14 * DAY  # STATUS warns this long before its end

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::", "*")


@dataclass(frozen=True)
class CertInfo:
    """What localaid needs to know of a certificate (the first of a PEM file)."""

    names: tuple[str, ...]  # subjectAltName: DNS names (lower case) and IP addresses (canonical text)
    not_before: float  # Unix time
    not_after: float  # Unix time
    fingerprint: str  # SHA-256 of the DER, "AB:CD:..."
    issuer: str  # RFC 4514
    subject: str  # RFC 4514
    is_ca: bool


def canonical_name(name: str) -> str:
    """An IP address in its canonical text ("::0:1" → "::1", a zone "%eth0" dropped, brackets
    dropped); a DNS name in lower case without a trailing dot."""
    text = name.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        return text.lower().rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    return name == "localhost" or (_is_ip(name) and ipaddress.ip_address(name).is_loopback)


def _unique(names) -> tuple[str, ...]:
    """Canonical names, first occurrence kept, empty ones dropped."""
    out: list[str] = []
    for n in names:
        c = canonical_name(n)
        if c and c not in out:
            out.append(c)
    return tuple(out)


def wanted_names(configured: tuple[str, ...], hostname: str, listen_host: str,
                 addresses: tuple[str, ...]) -> tuple[str, ...]:
    """The names a local-CA server certificate must carry, in order (the first is its subject).

    `configured` (the admin's list) when not empty; else the host's name, NAME.local for a
    name without a dot (mDNS), and the addresses a browser may use: `listen_host` when it is a
    specific address, the host's non-loopback `addresses` when nginx listens on a wildcard.
    Always followed by the probe's names (module docstring)."""
    listen = canonical_name(listen_host)
    wildcard = listen in WILDCARDS
    probe = list(LOOPBACK_NAMES) + ([] if wildcard or _is_loopback(listen) else [listen])
    if configured:
        return _unique(list(configured) + probe)
    host = canonical_name(hostname)
    own = [host] if host and not _is_loopback(host) else []
    if own and "." not in host and not _is_ip(host):
        own.append(host + ".local")
    lan = [a for a in _unique(addresses) if not _is_loopback(a)] if wildcard else []
    return _unique(own + lan + probe)


def _span(seconds: float) -> str:
    """ "12 days", "1 day", "5 hours", "less than an hour" (seconds ≥ 0)."""
    days, hours = int(seconds // DAY), int(seconds // 3600)
    if days:
        return f"{days} day{'s' if days > 1 else ''}"
    if hours:
        return f"{hours} hour{'s' if hours > 1 else ''}"
    return "less than an hour"


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _expiry(info: CertInfo, now: float) -> str:
    """ "expires in 12 days (2027-01-03)" / "expired 2 days ago (2027-01-03)"."""
    left = info.not_after - now
    if left > 0:
        return f"expires in {_span(left)} ({_date(info.not_after)})"
    return f"expired {_span(-left)} ago ({_date(info.not_after)})"


def _names_change(have: tuple[str, ...], wanted: tuple[str, ...]) -> str:
    """ "adds a, b, drops c" or "" when the sets are the same."""
    have_c, wanted_c = _unique(have), _unique(wanted)
    adds = [n for n in wanted_c if n not in have_c]
    drops = [n for n in have_c if n not in wanted_c]
    parts = ([f"adds {', '.join(adds)}"] if adds else []) + ([f"drops {', '.join(drops)}"] if drops else [])
    return ", ".join(parts)


def server_cert_action(info: CertInfo | None, wanted: tuple[str, ...], ca_fingerprint_ok: bool,
                       now: float) -> tuple[str, str]:
    """What to do with the local CA's server certificate → (action, why).

    "issue" when there is none; "reissue" when this host's CA did not sign it
    (`ca_fingerprint_ok` false), its names differ from `wanted`, or it is not valid yet (the
    clock went back past its start); "renew" from RENEW_BEFORE before its end on, expired
    included; else "keep"."""
    if info is None:
        return "issue", "no server certificate yet"
    if not ca_fingerprint_ok:
        return "reissue", "not issued by this host's CA"
    change = _names_change(info.names, wanted)
    if change:
        return "reissue", f"names changed: {change}"
    if now < info.not_before:
        return "reissue", f"not valid before {_date(info.not_before)}: the clock is behind its start"
    if now >= info.not_after - RENEW_BEFORE:
        return "renew", _expiry(info, now)
    return "keep", ""


def expiry_note(info: CertInfo | None, now: float) -> str | None:
    """A fragment for STATUS from WARN_BEFORE before the end on: "certificate expires in 5 days",
    "certificate expired 2 days ago"; None before then or without a certificate."""
    return None if info is None else _ending(info.not_after, now)


def _ending(not_after: float, now: float) -> str | None:
    if now < not_after - WARN_BEFORE:
        return None
    left = not_after - now
    if left > 0:
        return f"certificate expires in {_span(left)}"
    return f"certificate expired {_span(-left)} ago"


def tls_fragment(tls: TlsObs | None) -> str | None:
    """What STATUS says beside the HTTPS proxy about the certificate it serves (None: nothing
    to say, or webui.tls off)."""
    if tls is None:
        return None
    if tls.not_after is None:
        return tls.error
    return _ending(tls.not_after, tls.wall)
