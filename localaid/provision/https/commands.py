"""`localaid https ca` (the local CA's certificate, to trust it) and `localaid https renew`
(localaid-https-renew.timer: the server certificate renewed when policy_tls says it is due)."""

from __future__ import annotations

import os
import sys
import time

from localaid.provision.https import certs, service
from localaid.provision.https.nginx import UNIT
from localaid.provision.job import JobError, Lock
from localaid.provision.webui.layout import Ctx


def ca_main(args, config, ctx: Ctx | None = None, out=None) -> int:
    """The CA certificate (PEM) on stdout, its fingerprint and how to trust it on stderr."""
    ctx = ctx or Ctx(config, job=None)
    out = out or sys.stdout
    path = os.path.join(service.tls_dir(ctx), certs.CA_CRT)
    try:
        info = certs.read_cert(path)
    except certs.CertError as e:
        print(f"localaid https ca: {e}", file=sys.stderr)
        return 1
    if info is None:
        why = ("webui.tls uses your own certificate (webui.tls.cert_file): trust its CA instead"
               if config.webui.tls.own_pair else "no local CA yet: set webui.tls.enabled: true and reload localaid")
        print(f"localaid https ca: {why}", file=sys.stderr)
        return 1
    with open(path) as f:
        out.write(f.read())
    print(f"# {info.subject}\n# SHA-256 fingerprint: {info.fingerprint}\n"
          f"# Trust it in each browser or system that opens {config.webui.public_url}; compare the\n"
          f"# fingerprint with what the browser shows before you do.", file=sys.stderr)
    return 0


def renew_main(args, config, ctx: Ctx | None = None) -> int:
    """Renew the local CA's server certificate when due, and restart the proxy to serve it."""
    ctx = ctx or Ctx(config, job=None)
    t = config.webui.tls
    if not (config.webui.enabled and t.enabled) or t.own_pair:
        ctx.rep.done("nothing to renew: " + ("webui.tls uses your own certificate" if t.own_pair
                                             else "webui.tls is off"))
        return 0
    try:
        with Lock(ctx.layout.lock, "localaid Open WebUI job", wait=True, rep=ctx.rep):
            before = service.served_fingerprint(ctx)
            info = service.certificate(ctx, time.time())
            if info.fingerprint != before and ctx.host.unit_state(UNIT).active_state == "active":
                ctx.host.restart(UNIT)
                service.wait_answering(ctx)
    except JobError as e:
        ctx.rep.failed(str(e))
        return 1
    ctx.rep.done(f"HTTPS certificate valid until {time.strftime('%Y-%m-%d', time.gmtime(info.not_after))}"
                 + (" (renewed)" if info.fingerprint != before else ""))
    return 0
