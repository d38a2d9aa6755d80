"""HTTP probes for the supervisor's loop: one request, a hard timeout, a Probe back.

The loop uses the standard library's http.client rather than httpx: a probe is one small
request a second, and http.client does it for a tenth of the CPU and none of httpx's ~20 MB of
imports (see bench/idle_footprint.py). httpx serves the long, streaming work (model pulls).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

from localaid.records import LoadedModel, Probe


def request(url: str, timeout: float, method: str = "GET", body: object | None = None,
            host_header: str | None = None) -> tuple[Probe, object | None]:
    """Returns (probe, parsed JSON body or None). Never raises."""
    parts = urlsplit(url)
    start = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Host": host_header or parts.netloc, "Connection": "close"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, parts.path or "/", body=payload, headers=headers)
        # The deadline covers the whole exchange, not each socket operation.
        conn.sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))
        resp = conn.getresponse()
        data = resp.read(1 << 20)
        latency = time.monotonic() - start
        parsed = None
        if data and "json" in (resp.getheader("Content-Type") or ""):
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        ok = 200 <= resp.status < 300
        return Probe(ok, latency, resp.status, None if ok else f"HTTP {resp.status}"), parsed
    except (socket.timeout, TimeoutError):
        return Probe(False, time.monotonic() - start, None, f"timeout after {timeout:g} s"), None
    except ConnectionRefusedError:
        return Probe(False, time.monotonic() - start, None, "connection refused"), None
    except (OSError, http.client.HTTPException) as e:
        return Probe(False, time.monotonic() - start, None, (str(e) or type(e).__name__)[:120]), None
    finally:
        conn.close()


def parse_ps(payload: object) -> tuple[LoadedModel, ...]:
    """Ollama's GET /api/ps body → loaded models (unknown shapes give an empty tuple)."""
    models = payload.get("models") if isinstance(payload, dict) else None
    out = []
    for m in models or ():
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            out.append(LoadedModel(m["name"], int(m.get("size") or 0), int(m.get("size_vram") or 0)))
    return tuple(out)
