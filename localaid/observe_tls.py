"""What observe needs of webui.tls: the TLS context its probe of the HTTPS proxy uses, and the
served certificate's end (for STATUS, the metric and the alert).

The certificate file is parsed again only when it changes (its mtime and size), so an idle
cycle costs one stat(); python3-cryptography is imported only on hosts with webui.tls on.
"""

from __future__ import annotations

import os
import time

from localaid import paths
from localaid.adapters import http
from localaid.records import Probe, TlsObs


class TlsWatch:
    def __init__(self, tls_dir: str = paths.TLS_DIR):
        self.dir = tls_dir
        self._context = (None, None)  # (key, ssl.SSLContext)
        self._seen = (None, None)     # (key, TlsObs)

    def _key(self, name: str):
        try:
            st = os.stat(os.path.join(self.dir, name))
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def context(self, config):
        """The local CA's certificate trusted (and only it), checking the name probed; the
        administrator's certificate is not checked here (it need not name the loopback address)."""
        own = config.webui.tls.own_pair
        key = ("own",) if own else ("ca", self._key("ca.crt"))
        if self._context[0] != key:
            ca = os.path.join(self.dir, "ca.crt")
            ctx = http.tls_context(verify=False) if own or key[1] is None else http.tls_context(ca)
            self._context = (key, ctx)
        return self._context[1]

    def observe(self, config) -> TlsObs:
        key = self._key("server.crt")
        own = config.webui.tls.own_pair
        old_key, old = self._seen
        if old is not None and old_key == key and old.own == own:
            return TlsObs(time.time(), old.not_after, old.fingerprint, own, old.error)
        obs = _read(os.path.join(self.dir, "server.crt"), own)
        self._seen = (key, obs)
        return obs


def _read(path: str, own: bool) -> TlsObs:
    from localaid import certinfo  # python3-cryptography: only where webui.tls is on
    try:
        info = certinfo.read_cert(path)
    except certinfo.CertError as e:
        return TlsObs(time.time(), own=own, error=str(e))
    if info is None:
        return TlsObs(time.time(), own=own, error=f"{path} does not exist yet")
    return TlsObs(time.time(), info.not_after, info.fingerprint, own)


def answered(probe: Probe | None) -> Probe | None:
    """The HTTPS proxy is up when it answers over TLS, whatever the status: its 502 says that
    Open WebUI behind it is down, which Open WebUI's own probe judges."""
    if probe is None or probe.ok or probe.status is None:
        return probe
    return Probe(True, probe.latency, probe.status, None)
