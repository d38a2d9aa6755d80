"""HTTPS stand-in for ollama.com's download site: the install script and release archives.

    site = FakeOllamaSite(workdir).start()      # https://127.0.0.1:<ephemeral port>
    site.script_url                              # .../install.sh (the fake installer, see install.sh.in)
    site.cdn_url                                 # https://localhost:<another port>: the release host
    site.ca_pem                                  # the test CA, to install in a trust store
    site.mode["script"] = "404"                  # ok | 404 | html | truncated | slow | fail, and the
                                                 # hostile ones: drip | huge | chunked-huge |
                                                 # lying-length | lying-chunked | redirect-http |
                                                 # redirect-HTTP | redirect-ftp | redirect-https
    site.mode["archive"] = "broken"              # ok | broken (HEAD answers, GET is cut short)
    site.requests                                # [(method, path)] on both hosts, to prove a run
                                                 # downloaded nothing
    site.sent                                    # body bytes the last install.sh answer got out
    FakeOllamaSite(workdir, plain_http=True)     # also plain http on site.http_url (same answers)

As the real site does, /download/ollama-linux-<arch>.tar.zst (or .tgz) answers with a redirect
to another host, the release host (here https://localhost:<port>, the GitHub releases of the
real one: /ollama/ollama/releases/download/v<version>/<file>, or .../latest/download/<file>
without ?version=), which serves the archive. Releases in `versions` exist only as .tar.zst,
those in `tgz_versions` (older ones) only as .tgz, so the script's fallback from .tar.zst to .tgz
is taken for those. The fake installer takes the real script's GPU branch too (install.sh.in).

Certificates are made with the `openssl` command: a test CA and a server certificate for
127.0.0.1/localhost signed by it, so clients verify TLS for real. Archives: release.py.

Run standalone (for benchmarks or by hand):  python3 server.py DIR  → prints the script URL.
"""

from __future__ import annotations

import hashlib
import http.server
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import release  # noqa: E402

VERSIONS = ("0.9.0", "0.9.1")
TGZ_VERSIONS = ("0.5.7",)  # from before the .tar.zst releases
# Where the fake installer records that it took the GPU-driver branch (a path the install
# script's sandbox in localaid-ollama-setup.service can write, like /usr/local itself).
GPU_BRANCH_LOG = "/usr/local/share/fake-ollama-install/gpu-branch.log"
ARCHIVES = ("ollama-linux-amd64", "ollama-linux-arm64")


def make_ca(directory: str | Path) -> dict[str, Path]:
    """Create (once) ca.crt/ca.key and server.crt/server.key for 127.0.0.1 in `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {k: d / f"{k.replace('_', '.')}" for k in ("ca_crt", "ca_key", "server_crt", "server_key")}
    if all(p.exists() for p in files.values()):
        return files

    def openssl(*args):
        r = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr}")

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localaid test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(files["ca_key"]), "-out", str(files["ca_crt"]))
    csr, ext = d / "server.csr", d / "server.ext"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(files["server_key"]), "-out", str(csr))
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca_crt"]), "-CAkey", str(files["ca_key"]),
            "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(files["server_crt"]))
    return files


HOSTILE = ("drip", "huge", "chunked-huge", "lying-length", "lying-chunked", "redirect-http", "redirect-HTTP",
           "redirect-ftp", "redirect-https")
HTML = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>\n"


class FakeOllamaSite:
    def __init__(self, workdir: str | Path, versions=VERSIONS, latest: str | None = None, slow_seconds: float = 30,
                 plain_http: bool = False, tgz_versions=TGZ_VERSIONS):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = make_ca(self.dir / "tls")
        self.versions = tuple(versions)
        self.latest = latest or self.versions[-1]
        self.slow_seconds = slow_seconds
        self.archives = {(v, "tar.zst"): release.build_archive(v) for v in self.versions}
        self.archives.update({(v, "tgz"): release.build_archive(v, "tgz") for v in tgz_versions})
        self.mode = {"script": "ok", "archive": "ok"}
        self.requests: list[tuple[str, str]] = []
        self.sent = 0
        self.plain_http = plain_http
        self._httpd = None
        self._cdn = None
        self._plain = None
        self._thread = None
        self._stop = threading.Event()

    # ---- what it serves
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        """The release host the download site redirects archive downloads to."""
        return f"https://localhost:{self._cdn.server_address[1]}"

    @property
    def script_url(self) -> str:
        return self.url + "/install.sh"

    @property
    def http_url(self) -> str:
        """The plain-http twin of script_url (plain_http=True)."""
        return f"http://127.0.0.1:{self._plain.server_address[1]}/install.sh"

    @property
    def ca_pem(self) -> str:
        return self.certs["ca_crt"].read_text()

    def script(self, fail: bool = False) -> bytes:
        text = (HERE / "install.sh.in").read_text().replace("@BASE_URL@", self.url)
        text = text.replace("@GPU_BRANCH_LOG@", GPU_BRANCH_LOG)
        if fail:  # exits non-zero after the old libraries are gone, as a failed upgrade would
            text = text.replace('download_and_extract "', 'error "simulated installer failure (fault switch)"\n'
                                'download_and_extract "', 1)
        return text.encode()

    @property
    def script_sha256(self) -> str:
        return hashlib.sha256(self.script()).hexdigest()

    def downloads(self) -> list[tuple[str, str]]:
        return list(self.requests)

    # ---- lifecycle
    def start(self) -> "FakeOllamaSite":
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _reply(self, status, body=b"", ctype="application/octet-stream", length=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except OSError:
                        pass

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                site.requests.append((self.command, self.path))
                parts = urlsplit(self.path)
                cdn = self.server is site._cdn
                if parts.path == "/install.sh" and not cdn:
                    return self._script()
                name = parts.path.rsplit("/", 1)[-1]
                stem, _, ext = name.partition(".")
                if stem not in ARCHIVES or ext not in ("tar.zst", "tgz"):
                    return self._reply(404, b"Not Found\n", "text/plain")
                if not cdn and parts.path == f"/download/{name}":  # the site sends clients on
                    version = (parse_qs(parts.query).get("version") or [""])[0].lstrip("v")
                    where = f"download/v{version}" if version else "latest/download"
                    self.send_response(307)
                    self.send_header("Location", f"{site.cdn_url}/ollama/ollama/releases/{where}/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                release_dir = parts.path.rsplit("/", 2)[-2] if cdn else ""
                version = site.latest if release_dir == "download" else release_dir.lstrip("v")
                data = site.archives.get((version, ext)) if parts.path.startswith("/ollama/ollama/releases/") \
                    else None
                if data is None:
                    return self._reply(404, b"Not Found\n", "text/plain")
                if site.mode["archive"] == "broken" and self.command == "GET":
                    self._reply(200, data[: len(data) // 2], length=len(data))
                    self.close_connection = True
                    return None
                return self._reply(200, data)

            def _stream(self, headers, chunks, chunked=False):
                """Send `headers`, then each body piece as it comes; count what got out."""
                site.sent = 0
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.close_connection = True
                try:
                    for piece in chunks:
                        if site._stop.is_set():
                            return
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                        site.sent += len(piece)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client hung up: what a bounded reader does

            def _hostile(self, mode):
                body = site.script()
                big = (b"#!/bin/sh\n" + b"echo filler\n" * 60000)  # 720 kB a piece
                if mode == "drip":  # the whole header at once, then a byte every 0.2 s
                    def drip():
                        for i in range(len(body)):
                            time.sleep(0.2)
                            yield body[i:i + 1]
                    return self._stream({"Content-Type": "text/x-sh", "Content-Length": str(len(body))}, drip())
                if mode == "huge":  # honest about its 5 MiB
                    return self._stream({"Content-Length": str(5 << 20)}, (big[:1 << 20] for _ in range(5)))
                if mode == "chunked-huge":  # no length at all, 64 MiB in chunks
                    return self._stream({"Transfer-Encoding": "chunked"}, (big for _ in range(93)), chunked=True)
                if mode == "lying-length":  # claims 300 bytes, sends 8 MiB of script
                    return self._stream({"Content-Length": "300"}, [body] + [big] * 12)
                if mode == "lying-chunked":  # claims 300 bytes beside a chunked 64 MiB body
                    return self._stream({"Content-Length": "300", "Transfer-Encoding": "chunked"},
                                        (big for _ in range(93)), chunked=True)
                port = site._plain.server_address[1] if site._plain else 9
                target = {"redirect-http": f"http://127.0.0.1:{port}/install.sh",
                          "redirect-HTTP": f"HTTP://127.0.0.1:{port}/install.sh",
                          "redirect-ftp": "ftp://127.0.0.1/install.sh",
                          "redirect-https": site.url + "/install.sh?redirected=1"}[mode]
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _script(self):
                mode = site.mode["script"]
                if mode in HOSTILE and not (mode == "redirect-https" and "redirected" in self.path):
                    return self._hostile(mode)
                if mode == "404":
                    return self._reply(404, b"Not Found\n", "text/plain")
                if mode == "html":
                    return self._reply(200, HTML, "text/html; charset=utf-8")
                if mode == "slow":
                    site._stop.wait(site.slow_seconds)
                    return self._reply(200, site.script(), "text/x-sh")
                body = site.script(fail=(mode == "fail"))
                if mode == "truncated":  # the connection drops half-way: the client sees too few bytes
                    self._reply(200, body[: len(body) // 2], "text/x-sh", length=len(body))
                    self.close_connection = True
                    return
                self._reply(200, body, "text/x-sh")

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.certs["server_crt"]), str(self.certs["server_key"]))

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = super().get_request()
                return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address):
                pass  # clients that hang up (timeouts, truncation tests) are expected

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self._cdn = Server(("127.0.0.1", 0), Handler)  # reached as "localhost": another host name
        threading.Thread(target=self._cdn.serve_forever, daemon=True).start()
        if self.plain_http:
            class PlainServer(http.server.ThreadingHTTPServer):
                daemon_threads = True

                def handle_error(self, request, client_address):
                    pass

            self._plain = PlainServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=self._plain.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for server in (self._httpd, self._cdn, self._plain):
            if server is not None:
                server.shutdown()
                server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    site = FakeOllamaSite(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fake-ollama-site").start()
    print(site.script_url, flush=True)
    print(f"CA: {site.certs['ca_crt']}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        site.stop()
