"""What observe needs to probe a UI host's GPU nodes as Open WebUI reaches them: an https://
node with the system's CAs and the site CA trusted and its bearer token sent (nodekeys), a
plain http:// one as before; and whether Open WebUI's stored connections are what localaid
wants (the list of webui.ollama_urls, each https:// node's `key` its token).

The tokens stay in memory: no probe result, STATUS, state file or journal line carries one.
"""

from __future__ import annotations

from localaid import log, nodekeys, paths


class NodeTrust:
    def __init__(self, tls_dir: str = paths.TLS_DIR):
        self.tls_dir = tls_dir
        self.site_ca = f"{tls_dir}/ca.crt"
        self.keys = nodekeys.Keys()
        self._said: tuple[str, ...] = ()

    def refresh(self, urls=None) -> None:
        """The node files as they are now (a few stat() when unchanged); nothing for an empty
        `urls` (no node configured). A refused file is said once in the journal."""
        if urls is not None and not urls:
            return
        self.keys = nodekeys.load(self.tls_dir)
        if self.keys.errors != self._said:
            for e in self.keys.errors:
                log.warning("a GPU node's token file is not used", error=e)
            self._said = self.keys.errors

    def probe_args(self, url: str) -> tuple[object | None, dict[str, str] | None]:
        """(TLS context, headers) for a probe of the node at `url`."""
        if not url.startswith("https://"):
            return None, None
        return nodekeys.tls_context(self.site_ca), nodekeys.auth_headers(url, self.keys)

    def tokens(self, urls) -> dict[str, str]:
        """{URL as Open WebUI stores it: token} for the https:// nodes that have one."""
        return nodekeys.tokens(urls, self.keys)


def differ(urls, conns: dict | None, tokens: dict[str, str]) -> bool:
    """Open WebUI's connections (as last read: {url: (in use, ours, key)}) are not what localaid
    wants: another list, or an https:// node's stored key is not its token (a node added again
    has a new one)."""
    if conns is None:
        return False
    if list(conns) != [u.rstrip("/") for u in urls]:
        return True
    return any(conns[u][2] != token for u, token in tokens.items() if u in conns)
