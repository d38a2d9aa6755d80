"""What observe needs of webui.tls: the TLS context its probe of the HTTPS proxy uses, and the
served certificate's end (for STATUS, the metric and the alert).

The certificate is described by the job that installs it (certificate.json, written by
provision/https/service.py), so the daemon parses no certificate and imports no cryptography:
an idle cycle costs a stat() of that file and of the CA certificate.
"""

from __future__ import annotations

import os
import time

from localaid import fsutil, paths
from localaid.adapters import http
from localaid.records import Probe, TlsObs


def _key(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TlsWatch:
    def __init__(self, tls_dir: str = paths.TLS_DIR, state_file: str = paths.TLS_STATE_FILE):
        self.ca = os.path.join(tls_dir, "ca.crt")
        self.state_file = state_file
        self._context = (None, None)  # (key, ssl.SSLContext)
        self._seen = (None, None)     # (key, parsed certificate.json)

    def context(self, config):
        """The local CA's certificate trusted (and only it), checking the name probed; the
        administrator's certificate is not checked here (it need not name the loopback address)."""
        own = config.webui.tls.own_pair
        key = ("own",) if own else ("ca", _key(self.ca))
        if self._context[0] != key:
            verify = not own and key[1] is not None
            self._context = (key, http.tls_context(self.ca) if verify else http.tls_context(verify=False))
        return self._context[1]

    def observe(self, config) -> TlsObs:
        key = _key(self.state_file)
        if self._seen[0] != key or key is None:
            self._seen = (key, fsutil.read_json(self.state_file))
        doc = self._seen[1]
        own = config.webui.tls.own_pair
        if not isinstance(doc, dict) or not isinstance(doc.get("not_after"), (int, float)):
            return TlsObs(time.time(), own=own, error="no certificate installed yet")
        return TlsObs(time.time(), float(doc["not_after"]), str(doc.get("fingerprint") or ""), bool(doc.get("own")),
                      source=str(doc.get("source") or ("own" if doc.get("own") else "local-ca")),
                      ca_fingerprint=doc.get("ca_fingerprint") if isinstance(doc.get("ca_fingerprint"), str) else None)


def answered(probe: Probe | None) -> Probe | None:
    """The HTTPS proxy is up when it answers over TLS, whatever the status: its 502 says that
    Open WebUI behind it is down, which Open WebUI's own probe judges."""
    if probe is None or probe.ok or probe.status is None:
        return probe
    return Probe(True, probe.latency, probe.status, None)
