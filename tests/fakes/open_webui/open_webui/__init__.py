"""Test double of Open WebUI: the contract localaid relies on, nothing more.

Honours what the real package (0.12.x) does, as read in its source and measured
(/work/shared/research/open-webui.md):

- console script ``open-webui serve --host H --port P`` (the only options; default 0.0.0.0:8080);
- ``DATA_DIR`` (default: a directory inside the installed package, as the real one), holding
  ``webui.db`` (SQLite) whose schema is migrated forward on start and never backward: a database
  migrated by a newer version makes an older one refuse to start, as alembic does;
- ``WEBUI_SECRET_KEY``; when unset the key is written to ``./.webui_secret_key`` (mode 0644) like
  the real CLI does;
- ``WEBUI_ADMIN_EMAIL`` + ``WEBUI_ADMIN_PASSWORD`` (+ ``WEBUI_ADMIN_NAME``) create the first
  admin at start-up when no user exists, and then disable sign-up;
- ``GET /health`` (process), ``/health/db``, ``/ready`` (503 until start-up is complete),
  ``/api/version``, ``/api/config`` (``"onboarding": true`` only while no user exists),
  ``POST /api/v1/auths/signup`` (first user becomes admin; 403 once users exist and sign-up is
  off), ``POST /api/v1/auths/signin``.

Fault switches, from the environment variable ``FAKE_WEBUI_FAULTS`` and/or the file
``$DATA_DIR/fake-faults`` (read at start), whitespace-separated words ``name[@version][=arg]``
(``@version`` limits the fault to that release of the fake):

    fail-startup        exit 1 after binding, before start-up completes (/ready never 200)
    fail-migration      apply part of the newest migration, commit it, then exit 1
    hang                accept connections but never answer
    crash=N             exit 70 after serving for N seconds
    slow-start=N        start-up (/ready) takes N seconds longer
    slow-bind=N         sleep N seconds before binding the port at all
    busy-bind=N         work for N seconds before binding the port (as a long migration: CPU,
                        a line of progress every 10 s, no port)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socketserver
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

from open_webui import connections

try:
    VERSION = metadata.version("open-webui")
except metadata.PackageNotFoundError:  # running from the source tree
    VERSION = "0.0.0"

# Migrations, in order; each release knows the migrations up to its head.
MIGRATIONS = [
    "CREATE TABLE user (id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT, role TEXT, password TEXT)",
    "CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE chat (id TEXT PRIMARY KEY, user_id TEXT, title TEXT, body TEXT)",
    "ALTER TABLE chat ADD COLUMN archived INTEGER DEFAULT 0",
    "CREATE TABLE folder (id TEXT PRIMARY KEY, user_id TEXT, name TEXT)",
]
HEADS = {"0.12.4": 3, "0.12.5": 4, "0.12.6": 5}
HEAD = HEADS.get(VERSION, 3)


def log(msg: str) -> None:
    print(f"open-webui(fake {VERSION}): {msg}", flush=True)


# ----------------------------------------------------------------------------------- faults
def read_faults(data_dir: Path) -> dict[str, str]:
    words = os.environ.get("FAKE_WEBUI_FAULTS", "").split()
    try:
        words += (data_dir / "fake-faults").read_text().split()
    except OSError:
        pass
    out = {}
    for w in words:
        name, _, arg = w.partition("=")
        name, _, only = name.partition("@")
        if only and only != VERSION:
            continue
        out[name] = arg
    return out


# --------------------------------------------------------------------------------- database
def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 10_000)
    return base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(password: str, stored: str) -> bool:
    salt_b64, _, _ = stored.partition("$")
    return secrets.compare_digest(hash_password(password, base64.b64decode(salt_b64)), stored)


class DB:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)

    def schema(self) -> int:
        self.con.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num INTEGER NOT NULL)")
        row = self.con.execute("SELECT version_num FROM alembic_version").fetchone()
        return int(row[0]) if row else 0

    def migrate(self, faults: dict[str, str]) -> None:
        current = self.schema()
        if current > HEAD:
            raise SystemExit(f"database schema {current} is newer than this release knows ({HEAD}): "
                             "Can't locate revision (was it migrated by a newer Open WebUI?)")
        for n in range(current, HEAD):
            last = n == HEAD - 1
            if last and "fail-migration" in faults:
                # A one-way, half-done migration: committed, version not bumped.
                self.con.execute("CREATE TABLE IF NOT EXISTS half_migrated (x INTEGER)")
                self.con.execute("INSERT INTO half_migrated VALUES (1)")
                raise SystemExit(f"migration {n + 1} failed (fault injected)")
            log(f"migrating database {n} -> {n + 1}")
            self.con.execute("BEGIN")
            self.con.execute(MIGRATIONS[n])
            self.con.execute("DELETE FROM alembic_version")
            self.con.execute("INSERT INTO alembic_version VALUES (?)", (n + 1,))
            self.con.execute("COMMIT")

    def users(self) -> int:
        with self.lock:
            return self.con.execute("SELECT count(*) FROM user").fetchone()[0]

    def config(self, key: str, default: str) -> str:
        with self.lock:
            row = self.con.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_config(self, key: str, value: str) -> None:
        with self.lock:
            self.con.execute("INSERT OR REPLACE INTO config VALUES (?, ?)", (key, value))

    def add_user(self, email: str, name: str, password: str, role: str) -> None:
        with self.lock:
            self.con.execute("INSERT INTO user VALUES (?, ?, ?, ?, ?)",
                             (secrets.token_hex(8), email.lower(), name, role, hash_password(password)))

    def user(self, email: str):
        with self.lock:
            return self.con.execute("SELECT email, name, role, password FROM user WHERE email = ?",
                                    (email.lower(),)).fetchone()


# ------------------------------------------------------------------------------------- HTTP
class App:
    def __init__(self, data_dir: Path, faults: dict[str, str]):
        self.data_dir = data_dir
        self.faults = faults
        self.db: DB | None = None
        self.startup_complete = False
        self.signup_lock = threading.Lock()
        self.tokens: dict[str, str] = {}  # token -> role (sign-ins of this process)


ADMIN_GET = {"/ollama/config": connections.config, "/api/v1/retrieval/embedding": connections.embedding,
             "/api/v1/configs/models": connections.models_config}
ADMIN_POST = {"/ollama/config/update": connections.update,
              "/api/v1/retrieval/embedding/update": connections.set_embedding,
              "/api/v1/configs/models": connections.set_models_config}


class Handler(BaseHTTPRequestHandler):
    app: App
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the journal gets our own lines
        pass

    def send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {}

    def do_GET(self):
        app = self.app
        path = self.path.split("?", 1)[0]
        if path == "/health":
            return self.send(200, {"status": True})
        if path == "/health/db":
            try:
                with app.db.lock:
                    app.db.con.execute("SELECT 1")
                return self.send(200, {"status": True})
            except Exception as e:  # noqa: BLE001
                return self.send(503, {"detail": str(e)})
        if path == "/ready":
            if not app.startup_complete:
                return self.send(503, {"detail": "Startup not complete"})
            return self.send(200, {"status": True})
        if path == "/api/version":
            return self.send(200, {"version": VERSION})
        if path in ADMIN_GET:
            if self.role() != "admin":
                return self.send(401, {"detail": "Not authenticated"})
            return self.send(200, ADMIN_GET[path](app.db))
        if path == "/api/config":
            if not app.startup_complete:
                return self.send(503, {"detail": "Startup not complete"})
            doc = {"status": True, "name": "Open WebUI", "version": VERSION,
                   "features": {"auth": True, "enable_signup": app.db.config("ui.enable_signup", "true") == "true"}}
            if app.db.users() == 0:
                doc["onboarding"] = True
            return self.send(200, doc)
        return self.send(404, {"detail": "Not Found"})

    def do_POST(self):
        app = self.app
        path = self.path.split("?", 1)[0]
        form = self.body()
        if not app.startup_complete:
            return self.send(503, {"detail": "Startup not complete"})
        if path == "/api/v1/auths/signup":
            email, password = str(form.get("email", "")), str(form.get("password", ""))
            if "@" not in email or not password:
                return self.send(400, {"detail": "Invalid email format"})
            with app.signup_lock:
                has_users = app.db.users() > 0
                if has_users and app.db.config("ui.enable_signup", "true") != "true":
                    return self.send(403, {"detail": "You do not have permission to access this resource."})
                if app.db.user(email):
                    return self.send(400, {"detail": "Uh-oh! This email is already registered."})
                role = "pending" if has_users else "admin"
                app.db.add_user(email, str(form.get("name", "")), password, role)
            return self.send(200, {"email": email.lower(), "role": role, "token": secrets.token_hex(16)})
        if path == "/api/v1/auths/signin":
            row = app.db.user(str(form.get("email", "")))
            if row is None or not check_password(str(form.get("password", "")), row[3]):
                return self.send(400, {"detail": "The email or password provided is incorrect."})
            token = secrets.token_hex(16)
            app.tokens[token] = row[2]
            return self.send(200, {"email": row[0], "name": row[1], "role": row[2], "token": token})
        if path in ADMIN_POST:
            if self.role() != "admin":
                return self.send(401, {"detail": "Not authenticated"})
            doc = ADMIN_POST[path](app.db, form)
            return self.send(200, doc) if doc else self.send(422, {"detail": "invalid form"})
        if path == "/api/chat/completions":
            if self.role() is None:
                return self.send(401, {"detail": "Not authenticated"})
            return self.send(*connections.chat(app.db, form))
        return self.send(404, {"detail": "Not Found"})

    def role(self) -> str | None:
        """The role of the Bearer token's user (None: no valid token)."""
        auth = self.headers.get("Authorization", "")
        return self.app.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None


class HangingHandler(socketserver.BaseRequestHandler):
    def handle(self):
        time.sleep(3600)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler):
        if ":" in addr[0]:
            import socket
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)


# -------------------------------------------------------------------------------------- CLI
def default_data_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def startup(app: App) -> None:
    faults = app.faults
    try:
        if "slow-start" in faults:
            time.sleep(float(faults["slow-start"] or 5))
        if "fail-startup" in faults:
            log("start-up failed (fault injected)")
            os._exit(1)
        app.db = DB(app.data_dir / "webui.db")
        try:
            app.db.migrate(faults)
        except SystemExit as e:
            log(str(e))
            os._exit(1)
        connections.seed(app.db)
        email, password = os.environ.get("WEBUI_ADMIN_EMAIL", ""), os.environ.get("WEBUI_ADMIN_PASSWORD", "")
        if email and password and app.db.users() == 0:
            app.db.add_user(email, os.environ.get("WEBUI_ADMIN_NAME", "Admin"), password, "admin")
            app.db.set_config("ui.enable_signup", "false")
            log(f"Admin account created successfully: {email}")
        app.startup_complete = True
        log("start-up complete")
        if "crash" in faults:
            time.sleep(float(faults["crash"] or 5))
            log("crashing (fault injected)")
            os._exit(70)
    except Exception as e:  # noqa: BLE001
        log(f"start-up failed: {e!r}")
        os._exit(1)


def migrate_busily(seconds: float) -> None:
    """Half a core of work (hashing, then a short nap) for `seconds`, saying so now and then."""
    end, said = time.monotonic() + seconds, 0.0
    while (now := time.monotonic()) < end:
        busy_until = now + 0.05
        while time.monotonic() < busy_until:
            hashlib.sha256(b"x" * 4096).digest()
        time.sleep(0.05)
        if now - said >= 10:
            log(f"migrating: {end - now:.0f} s to go")
            said = now


def serve(host: str, port: int) -> int:
    data_dir = Path(os.environ.get("DATA_DIR") or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("WEBUI_SECRET_KEY") is None:
        key_file = Path.cwd() / ".webui_secret_key"
        log("Loading WEBUI_SECRET_KEY from file, not provided as an environment variable.")
        if not key_file.exists():
            key_file.write_bytes(base64.b64encode(secrets.token_bytes(24)))
        os.environ["WEBUI_SECRET_KEY"] = key_file.read_text()
    faults = read_faults(data_dir)
    app = App(data_dir, faults)
    if "slow-bind" in faults:
        time.sleep(float(faults["slow-bind"] or 5))
    if "busy-bind" in faults:
        migrate_busily(float(faults["busy-bind"] or 5))
    handler = HangingHandler if "hang" in faults else type("H", (Handler,), {"app": app})
    server = Server((host, port), handler)
    log(f"listening on {host}:{port}, DATA_DIR={data_dir}, faults={sorted(faults) or 'none'}")
    if "hang" not in faults:
        threading.Thread(target=startup, args=(app,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="open-webui")
    p.add_argument("--version", action="store_true")
    sub = p.add_subparsers(dest="command")
    sp = sub.add_parser("serve")
    sp.add_argument("--host", default="0.0.0.0")
    sp.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    if args.version:
        print(f"Open WebUI version: {VERSION}")
        return 0
    if args.command != "serve":
        p.print_help()
        return 2
    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
