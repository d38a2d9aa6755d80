"""`localaid doctor`'s findings about HTTPS (webui.tls): nginx, the certificate and its end, the
local CA to trust, the keys' modes, Debian's own nginx site, and plain HTTP on the network."""

from __future__ import annotations

import os
import stat
import subprocess
import time

from localaid import policy_tls
from localaid.provision.https import certs
from localaid.provision.https.nginx import UNIT
from localaid.provision.https.service import NGINX, NGINX_MISSING, RENEW_TIMER, source, wanted
from localaid.records import Check

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _systemctl(verb: str, unit: str) -> str:
    try:
        r = subprocess.run(["systemctl", verb, unit], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return r.stdout.strip() or "unknown"


def _off(config) -> list[Check]:
    w = config.webui
    if w.host in LOOPBACK or w.host.startswith("127."):
        return [Check("https", True, f"off (webui.tls.enabled: false); Open WebUI on {w.public_url} (this host only)")]
    return [Check("https", None, f"off, while Open WebUI serves plain HTTP to the network on {w.host}:{w.port}: "
                                 f"sign-ins and chats cross it in clear text, and browsers refuse the microphone "
                                 f"and voice features (no secure context)",
                  "set webui.tls.enabled: true (apt install nginx first), then systemctl reload localaid")]


def _certificate(config, d: str, now: float) -> list[Check]:
    try:
        info = certs.read_cert(os.path.join(d, certs.SERVER_CRT))
    except certs.CertError as e:
        return [Check("https certificate", False, str(e), "localaid https renew issues a new one")]
    if info is None:
        return [Check("https certificate", False, "none yet", "systemctl start localaid-webui-setup")]
    left = info.not_after - now
    until = time.strftime("%Y-%m-%d", time.gmtime(info.not_after))
    who = {"own": "your own (webui.tls.cert_file)", "local-ca": "issued by the local CA",
           "node": "this node's, from the UI host's CA"}[source(config)]
    text = f"{who}, for {', '.join(info.names) or info.subject}; valid until {until} ({int(left // 86400)} days)"
    if left <= 0:
        return [Check("https certificate", False, text, _renew_advice(config))]
    ok = True if left > policy_tls.WARN_BEFORE else None
    return [Check("https certificate", ok, text, "" if ok else _renew_advice(config))]


def _renew_advice(config) -> str:
    if source(config) == "node":
        return "on the UI host: localaid node add NAME ADDRESS... again; here: localaid node join BUNDLE"
    if config.webui.tls.own_pair:
        return "renew webui.tls.cert_file, then systemctl reload localaid"
    return f"localaid https renew; journalctl -u {RENEW_TIMER.replace('.timer', '.service')}"


def _ca(config, d: str) -> list[Check]:
    if source(config) != "local-ca":
        return []
    try:
        ca = certs.read_cert(os.path.join(d, certs.CA_CRT))
    except certs.CertError as e:
        return [Check("https local CA", False, str(e))]
    if ca is None:
        return [Check("https local CA", False, "not created yet", "systemctl start localaid-webui-setup")]
    out = [Check("https local CA", True, f"{ca.subject}, SHA-256 {ca.fingerprint}",
                 f"trust it in browsers: localaid https ca > localaid-ca.crt (or "
                 f"{config.webui.public_url}/localaid-ca.crt), after comparing the fingerprint")]
    enabled = _systemctl("is-enabled", RENEW_TIMER)
    out.append(Check("https renewal", True if enabled == "enabled" else None, f"{RENEW_TIMER} {enabled}",
                     "" if enabled == "enabled" else "systemctl start localaid-webui-setup (it enables the timer)"))
    return out


def _keys(d: str) -> list[Check]:
    out = []
    for name in (certs.CA_KEY, certs.SERVER_KEY):
        path = os.path.join(d, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        ok = stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o077
        out.append(Check("https key", ok, f"{path}: mode {st.st_mode & 0o7777:04o}, uid {st.st_uid}",
                         "" if ok else f"chown root: {path}; chmod 0600 {path}"))
    return out


def _nginx() -> list[Check]:
    if not os.path.exists(NGINX):
        return [Check("https nginx", False, "not installed", NGINX_MISSING)]
    out = [Check("https proxy", _systemctl("is-active", UNIT) == "active", f"{UNIT} {_systemctl('is-active', UNIT)}",
                 f"journalctl -u {UNIT}")]
    if _systemctl("is-active", "nginx.service") == "active":
        out.append(Check("https nginx", None, "Debian's own nginx.service runs too (its default site on port 80)",
                         "systemctl disable --now nginx, unless you use it"))
    return out


def doctor_checks(config, tls_dir: str | None = None) -> list[Check]:
    if not wanted(config):
        return _off(config) if config.webui.enabled else []
    d = tls_dir or certs.TLS_DIR
    if os.geteuid() != 0:
        return [Check("https", None, "the certificates are root's", skipped=True)]
    return _nginx() + _certificate(config, d, time.time()) + _ca(config, d) + _keys(d)
