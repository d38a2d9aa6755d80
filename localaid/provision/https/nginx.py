"""The nginx configuration of localaid-https.service, rendered from webui.tls and ollama.expose.

nginx runs as a dynamic user with no access to /etc/localaid/tls: systemd hands it the server
certificate and key as credentials (LoadCredential=, copied at each start under
/run/credentials/localaid-https.service/). What the configuration does, and why:

  listen ADDR:PORT ssl       webui.listen, TLS only; plain HTTP arriving there gets nginx's error
                             497, turned into a 301 to the same URL over https://
  proxy_buffering off        a chat's tokens pass as they come (Open WebUI streams them)
  Upgrade / Connection       websockets (socket.io) pass; other requests send an empty Connection
                             header, not "close", so the kept-alive upstream stays open (a
                             reused, closed one answers 502)
  client_max_body_size 0     Open WebUI limits uploads itself; nginx's 1 MB would refuse documents
  X-Forwarded-Proto https    Open WebUI builds its links for https
  /localaid-ca.crt           the local CA's certificate (public), for browsers to trust it
                             after checking its fingerprint (`localaid https ca`)

A GPU node (ollama.expose) gets a second server: Ollama's API over TLS, a request without the
node's token (Authorization: Bearer, compared by a map nginx reads from the credential
token.map) answered 401, the token not passed on to Ollama.

Measured (bench/proxy.py): +0.3–0.4 ms to a chat's first token, no loss of tokens/s, 5 MiB.
"""

from __future__ import annotations

UNIT = "localaid-https.service"
CONF = "/var/lib/localaid/https/nginx.conf"
CREDENTIALS = f"/run/credentials/{UNIT}"
RUNTIME = "/run/localaid-https"          # RuntimeDirectory=: the pid file
CACHE = "/var/cache/localaid-https"      # CacheDirectory=: request bodies nginx spools
CA_CERT = "/etc/localaid/tls/ca.crt"

_TEMPS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def listen_directive(host: str, port: int) -> str:
    """`listen` for webui.listen: "::" serves IPv4 too (ipv6only=off), like Open WebUI did."""
    if host == "::":
        return f"listen [::]:{port} ssl ipv6only=off;"
    return f"listen {'[' + host + ']' if ':' in host else host}:{port} ssl;"


def _ca_location(local_ca: bool) -> list[str]:
    if not local_ca:
        return []
    return ["        location = /localaid-ca.crt {",
            f"            alias {CA_CERT};",
            "            default_type application/x-x509-ca-cert;",
            "        }"]


def _tls(host: str, port: int) -> list[str]:
    return [f"        {listen_directive(host, port)}",
            f"        ssl_certificate {CREDENTIALS}/server.crt;",
            f"        ssl_certificate_key {CREDENTIALS}/server.key;",
            "        ssl_protocols TLSv1.2 TLSv1.3;"]


def _streaming() -> list[str]:
    return ["            proxy_http_version 1.1;",
            "            proxy_buffering off;",
            "            proxy_request_buffering off;",
            "            proxy_read_timeout 1h;",
            "            proxy_send_timeout 1h;"]


def _webui_server(config, local_ca: bool) -> list[str]:
    w = config.webui
    backend_host, backend_port = w.serve
    return [
        f"    upstream open_webui {{ server {backend_host}:{backend_port}; keepalive 16; }}",
        "    server {",
        *_tls(w.host, w.port),
        "        error_page 497 =301 https://$host:$server_port$request_uri;",
        *_ca_location(local_ca),
        "        location / {",
        "            proxy_pass http://open_webui;",
        "            proxy_set_header Upgrade $http_upgrade;",
        "            proxy_set_header Connection $connection_upgrade;",
        "            proxy_set_header Host $http_host;",
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "            proxy_set_header X-Forwarded-Proto https;",
        *_streaming(),
        "        }",
        "    }",
    ]


def _ollama_server(config) -> list[str]:
    """A GPU node (ollama.expose): Ollama's API for requests with the node's token only. The
    token is compared by a map read from a credential (token.map); it is not passed on."""
    host, port = config.ollama.expose_bind
    return [
        f"    map $http_authorization $node_token_ok {{ default 0; include {CREDENTIALS}/token.map; }}",
        f"    upstream ollama {{ server 127.0.0.1:{config.ollama.port}; keepalive 8; }}",
        "    server {",
        *_tls(host, port),
        "        location / {",
        "            if ($node_token_ok = 0) { return 401; }",
        "            proxy_pass http://ollama;",
        "            proxy_set_header Connection '';",
        "            proxy_set_header Host 127.0.0.1;  # Ollama on loopback answers local Host names only",
        "            proxy_set_header Authorization '';",
        *_streaming(),
        "        }",
        "    }",
    ]


def serves_webui(config) -> bool:
    return config.webui.enabled and config.webui.tls.enabled


def serves_ollama(config) -> bool:
    return config.ollama.enabled and config.ollama.expose is not None


def render(config, local_ca: bool) -> str:
    """nginx.conf for webui.tls and/or ollama.expose (local_ca: Open WebUI's certificate comes
    from localaid's own CA, whose certificate is then served too)."""
    temps = " ".join(f"{t}_temp_path {CACHE}/{t.split('_')[0]};" for t in _TEMPS)
    lines = [
        "# Written by localaid from /etc/localaid/localaid.yaml (webui.tls, ollama.expose); edits are overwritten.",
        "worker_processes 1;",
        f"pid {RUNTIME}/nginx.pid;",
        "error_log stderr warn;",
        "events { worker_connections 1024; }",
        "http {",
        "    access_log off;",
        "    server_tokens off;",
        f"    {temps}",
        "    client_max_body_size 0;",
        "    ssl_session_cache shared:tls:1m;",
        "    map_hash_bucket_size 128;  # a node's token map: \"Bearer <token>\" is longer than the default's 64",
        "    map $http_upgrade $connection_upgrade { default upgrade; '' ''; }",
        *(_webui_server(config, local_ca) if serves_webui(config) else []),
        *(_ollama_server(config) if serves_ollama(config) else []),
        "}",
    ]
    return "\n".join(lines) + "\n"
