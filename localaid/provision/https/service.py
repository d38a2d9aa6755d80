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
from localaid.provision.https import certs, nodejoin
from localaid.provision.https.nginx import CONF, UNIT, render, serves_ollama, serves_webui
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


def cert_names(config) -> tuple[str, ...]:
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
    action, why = policy_tls.server_cert_action(info, cert_names(ctx.config), trusted, now)
    if action == "keep":
        return info
    ctx.rep.say(f"issuing the HTTPS server certificate: {why}")
    return certs.issue_server(d, cert_names(ctx.config), now)


def source(config) -> str:
    """Whose certificate nginx serves: "node" (a GPU node's, from the UI host's CA through
    localaid node join), "own" (webui.tls.cert_file) or "local-ca" (this host's CA)."""
    if serves_ollama(config):
        return "node"
    return "own" if config.webui.tls.own_pair else "local-ca"


def _node_certificate(ctx) -> certs.CertInfo:
    info = certs.read_cert(os.path.join(tls_dir(ctx), certs.SERVER_CRT))
    if info is None or not os.path.exists(os.path.join(tls_dir(ctx), nodejoin.NODE_FILE)):
        raise JobError(nodejoin.NOT_JOINED, blocked="this node has not joined (localaid node join)")
    return info


def certificate(ctx, now: float) -> certs.CertInfo:
    """The certificate nginx is to serve, in place, and described in certificate.json for the
    daemon (STATUS, the expiry metric)."""
    t, kind = ctx.config.webui.tls, source(ctx.config)
    try:
        if kind == "node":
            info = _node_certificate(ctx)
        elif kind == "own":
            info = certs.install_pair(tls_dir(ctx), ctx.layout.p(t.cert_file), ctx.layout.p(t.key_file))
        else:
            info = _local_ca_certificate(ctx, now)
    except certs.CertError as e:
        raise JobError(str(e), blocked="the HTTPS certificate needs the administrator") from None
    state = ctx.layout.p(paths.TLS_STATE_FILE)
    os.makedirs(os.path.dirname(state), mode=0o755, exist_ok=True)
    ca = None if kind == "own" else certs.read_cert(os.path.join(tls_dir(ctx), certs.CA_CRT))
    fsutil.write_json(state, {"not_after": info.not_after, "fingerprint": info.fingerprint, "names": info.names,
                              "own": kind != "local-ca", "source": kind,
                              "ca_fingerprint": ca.fingerprint if ca else None})
    return info


def served_fingerprint(ctx) -> str | None:
    try:
        info = certs.read_cert(os.path.join(tls_dir(ctx), certs.SERVER_CRT))
    except certs.CertError:
        return None
    return info.fingerprint if info else None


def _ports(config) -> list[int]:
    ports = [config.webui.port] if serves_webui(config) else []
    if serves_ollama(config):
        ports.append(config.ollama.expose_bind[1])
    return ports


def render_dropin(config) -> str:
    """What the shipped unit lacks here: CAP_NET_BIND_SERVICE for a port below 1024, and only
    then; on a GPU node, the token's map as a credential, and ollama.allow_from as the proxy's
    firewall (a second layer behind the token; not when it serves Open WebUI too)."""
    out = []
    if any(p < 1024 for p in _ports(config)):
        out += ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    if serves_ollama(config):
        out.append(f"LoadCredential=token.map:{certs.TLS_DIR}/{nodejoin.TOKEN_MAP}")
        if config.ollama.allow_from and not serves_webui(config):
            out += ["IPAddressAllow=localhost " + " ".join(config.ollama.allow_from), "IPAddressDeny=any"]
    if not out:
        return ""
    return "# Written by localaid from webui.tls and ollama.expose; edits are overwritten.\n[Service]\n" + \
        "\n".join(out) + "\n"


def configure(ctx) -> bool:
    """Certificate, nginx.conf, drop-in. True when the running proxy must restart to see them."""
    if not os.path.exists(ctx.layout.p(NGINX)):
        raise JobError(NGINX_MISSING, blocked="nginx is not installed (apt install nginx)")
    before = served_fingerprint(ctx)
    info = certificate(ctx, time.time())
    changed = info.fingerprint != before
    conf = render(ctx.config, local_ca=source(ctx.config) == "local-ca")
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
    _renewal(ctx, on=source(ctx.config) == "local-ca")
    st = host.unit_state(UNIT)
    running = st.active_state in ("active", "activating", "reloading")
    if changed and running:
        ctx.rep.say("HTTPS configuration or certificate changed: restarting the proxy")
        host.restart(UNIT)
    elif not running:
        host.start(UNIT)
    wait_answering(ctx)
    ctx.rep.say("HTTPS serving", url=ctx.config.webui.public_url if serves_webui(ctx.config)
                else f"https://{ctx.config.ollama.expose}")


def wait_answering(ctx) -> None:
    """Until the proxy answers over TLS (any HTTP status: Open WebUI behind it is judged apart)."""
    host, url = ctx.host, ctx.config.proxy_probe
    deadline = host.monotonic() + ANSWER_TIMEOUT
    while True:
        status, _ = host.get(url)
        if status is not None:
            return
        st = host.unit_state(UNIT)
        if st.active_state == "failed" or host.monotonic() >= deadline:
            raise JobError(f"{UNIT} does not answer on {url} "
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


def wanted(config) -> bool:
    return serves_webui(config) or serves_ollama(config)


def before_webui(ctx) -> None:
    """Before Open WebUI is configured: stop the proxy when it is no longer wanted, or when it
    holds webui.listen, which Open WebUI is to take back (webui.tls off on a GPU node)."""
    try:
        with open(ctx.layout.p(CONF)) as f:
            holds_listen = "upstream open_webui" in f.read()
    except FileNotFoundError:
        holds_listen = False
    if not wanted(ctx.config) or (holds_listen and not serves_webui(ctx.config)):
        stop(ctx)


def stop(ctx) -> None:
    """webui.tls and ollama.expose are off (or the proxy must let webui.listen go): stop and
    disable the proxy localaid started."""
    if os.path.exists(ctx.layout.p(MARKER)):
        ctx.rep.say(f"stopping and disabling {UNIT}")
        ctx.host.stop(UNIT)
        ctx.host.disable(UNIT)
        _renewal(ctx, on=False)
        os.unlink(ctx.layout.p(MARKER))
