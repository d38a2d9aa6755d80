"""A throw-away HTTPS server on 127.0.0.1 for the unit tests of TLS probes: a handler class served
over TLS with a certificate and key (made by localaid's certs.py in the test), in a thread."""

from __future__ import annotations

import ssl
import threading
from http.server import HTTPServer


def serve(handler: type, cert: str, key: str) -> HTTPServer:
    """Serve `handler` over TLS on a free loopback port; the caller shuts it down."""
    srv = HTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
