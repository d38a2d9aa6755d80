"""localaid-https.service: its certificate, its nginx configuration, starting and stopping it.

Run by the Open WebUI set-up job (localaid provision webui), after Open WebUI itself: with
webui.tls on, Open WebUI serves on 127.0.0.1:backend_port and this proxy on webui.listen; with
it off, the proxy is stopped first, so that Open WebUI can take webui.listen back.

Certificates live in /etc/localaid/tls (certs.py): the administrator's pair (webui.tls.cert_file
and key_file, copied there) or the local CA's server certificate, issued for the names
policy_tls.wanted_names lists and renewed when policy_tls says so (here at each run of the job,
and daily by localaid-https-renew.timer). nginx gets them as credentials, at its start.
"""

from __future__ import annotations

import os
import socket
import time

from localaid import fsutil, paths, policy_tls, procfs
from localaid.provision.https import certs
from localaid.provision.https.nginx import CONF, UNIT, render
from localaid.provision.job import JobError

NGINX = "/usr/sbin/nginx"
DROPIN = f"/etc/systemd/system/{UNIT}.d/50-localaid.conf"
RENEW_TIMER = "localaid-https-renew.timer"
MARKER = "/var/lib/localaid/https/enabled-by-localaid"
ANSWER_TIMEOUT = 30.0
NGINX_MISSING = ("webui.tls needs nginx: `apt install nginx` (Debian's package also enables its own site on "
                 "port 80: `systemctl disable --now nginx` unless you use it)")


def tls_dir(ctx) -> str:
    return ctx.layout.p(certs.TLS_DIR)


def ca_name() -> str:
    return f"localaid CA {socket.gethostname()}"


def wanted(config) -> tuple[str, ...]:
    """The names the local CA's server certificate is for."""
    w = config.webui
    return policy_tls.wanted_names(w.tls.names, socket.gethostname(), w.host, procfs.local_addresses())


def _local_ca_certificate(ctx, now: float) -> certs.CertInfo:
    d = tls_dir(ctx)
    ca, created = certs.ensure_ca(d, ca_name())
    if created:
        ctx.rep.say("created localaid's certificate authority", fingerprint=ca.fingerprint,
                    file=os.path.join(d, certs.CA_CRT))
    try:
        info = certs.read_cert(os.path.join(d, certs.SERVER_CRT))
    except certs.CertError as e:
        ctx.rep.warn(f"replacing an unreadable server certificate: {e}")
        info = None
    trusted = info is not None and certs.ca_matches(d, info)
    action, why = policy_tls.server_cert_action(info, wanted(ctx.config), trusted, now)
    if action == "keep":
        return info
    ctx.rep.say(f"issuing the HTTPS server certificate: {why}")
    return certs.issue_server(d, wanted(ctx.config), now)


def certificate(ctx, now: float) -> certs.CertInfo:
    """The certificate nginx is to serve, in place (the administrator's, or the local CA's), and
    described in certificate.json for the daemon (STATUS, the expiry metric)."""
    t = ctx.config.webui.tls
    try:
        if t.own_pair:
            info = certs.install_pair(tls_dir(ctx), ctx.layout.p(t.cert_file), ctx.layout.p(t.key_file))
        else:
            info = _local_ca_certificate(ctx, now)
    except certs.CertError as e:
        raise JobError(str(e), blocked="the HTTPS certificate needs the administrator") from None
    state = ctx.layout.p(paths.TLS_STATE_FILE)
    os.makedirs(os.path.dirname(state), mode=0o755, exist_ok=True)
    fsutil.write_json(state, {"not_after": info.not_after, "fingerprint": info.fingerprint, "names": info.names,
                              "own": t.own_pair})
    return info


def served_fingerprint(ctx) -> str | None:
    try:
        info = certs.read_cert(os.path.join(tls_dir(ctx), certs.SERVER_CRT))
    except certs.CertError:
        return None
    return info.fingerprint if info else None


def render_dropin(config) -> str:
    """A port below 1024 (webui.listen: 0.0.0.0:443) needs CAP_NET_BIND_SERVICE, and only then."""
    if config.webui.port >= 1024:
        return ""
    return ("# Written by localaid: webui.listen is a privileged port.\n[Service]\n"
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n")


def configure(ctx) -> bool:
    """Certificate, nginx.conf, drop-in. True when the running proxy must restart to see them."""
    if not os.path.exists(ctx.layout.p(NGINX)):
        raise JobError(NGINX_MISSING, blocked="nginx is not installed (apt install nginx)")
    before = served_fingerprint(ctx)
    info = certificate(ctx, time.time())
    changed = info.fingerprint != before
    conf = render(ctx.config, local_ca=not ctx.config.webui.tls.own_pair)
    changed |= fsutil.write_if_changed(ctx.layout.p(CONF), conf, 0o644)
    if fsutil.write_if_changed(ctx.layout.p(DROPIN), render_dropin(ctx.config), 0o644):
        ctx.host.daemon_reload()
        changed = True
    return changed


def start(ctx) -> None:
    """Configure the proxy and have it serving: started, or restarted when something changed."""
    changed = configure(ctx)
    host = ctx.host
    if not os.path.exists(ctx.layout.p(MARKER)):
        host.enable(UNIT)
        fsutil.atomic_write(ctx.layout.p(MARKER), f"localaid enabled {UNIT}\n")
    _renewal(ctx, on=not ctx.config.webui.tls.own_pair)
    st = host.unit_state(UNIT)
    running = st.active_state in ("active", "activating", "reloading")
    if changed and running:
        ctx.rep.say("HTTPS configuration or certificate changed: restarting the proxy")
        host.restart(UNIT)
    elif not running:
        host.start(UNIT)
    wait_answering(ctx)
    ctx.rep.say("HTTPS serving", url=ctx.config.webui.public_url)


def wait_answering(ctx) -> None:
    """Until the proxy answers over TLS (any HTTP status: Open WebUI behind it is judged apart)."""
    host, url = ctx.host, ctx.config.webui.proxy_url + "/health"
    deadline = host.monotonic() + ANSWER_TIMEOUT
    while True:
        status, _ = host.get(url)
        if status is not None:
            return
        st = host.unit_state(UNIT)
        if st.active_state == "failed" or host.monotonic() >= deadline:
            raise JobError(f"{UNIT} does not answer on {ctx.config.webui.proxy_url} "
                           f"({st.active_state}; `journalctl -u {UNIT}` says why)")
        host.sleep(0.2)


def _renewal(ctx, on: bool) -> None:
    """localaid-https-renew.timer: enabled and started for the local CA's certificate only."""
    st = ctx.host.unit_state(RENEW_TIMER)
    if on and st.active_state != "active":
        ctx.host.enable(RENEW_TIMER)
        ctx.host.start(RENEW_TIMER)
    elif not on and st.active_state == "active":
        ctx.host.stop(RENEW_TIMER)
        ctx.host.disable(RENEW_TIMER)


def stop(ctx) -> None:
    """webui.tls is off (or Open WebUI is): stop and disable the proxy localaid started."""
    if os.path.exists(ctx.layout.p(MARKER)):
        ctx.rep.say(f"webui.tls is off: stopping and disabling {UNIT}")
        ctx.host.stop(UNIT)
        ctx.host.disable(UNIT)
        _renewal(ctx, on=False)
        os.unlink(ctx.layout.p(MARKER))
