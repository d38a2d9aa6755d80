#!/usr/bin/python3
"""Bad inputs through localaid's real code paths: nothing may crash, hang or change anything.

  config    files in a temporary directory, read by localaid.config.load() and by
            `python3 -m localaid --config FILE --conf-d DIR config check` (exit 78 expected);
  cli       `upgrade webui|ollama --version V` with values that are not versions (exit 2), under a
            temporary LOCALAID_STATE_DIR/RUN_DIR/CONFIG whose configuration is invalid on purpose:
            a value wrongly let through stops there (exit 78) instead of upgrading anything;
  hostile   installer lines and registry errors with line breaks and escapes, through
            job.Reporter (journal + progress file), log.format_line and notify.Notifier bound to a
            datagram socket of ours: no extra journal line, no forged sd_notify field;
  download  the install script's download and checks (obtain_script of the Ollama provisioning)
            against an HTTPS site on 127.0.0.1 with the unit tests' CA; every script it serves
            would create a marker file if anything ran it.

Verdicts: ok; CRASH (an exception other than the documented error type, a traceback from the
CLI, a load() still running after 15 s); HANG (a download that outlived its budget by 3 s);
CHANGED (files differ afterwards, a script ran); FORGED (an extra journal line or notify field);
FAIL (a control input failed: the harness is broken); accepted (a finding: a bad input got
through where a later check may still stop it); skipped. Exit status 1 on CRASH, HANG, CHANGED,
FORGED or FAIL.

    bench/bad_inputs.py [--md | --json] [--group config,cli,hostile,download]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.server
import importlib
import inspect
import io
import json
import os
import random
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from localaid import config as config_mod, log, paths, progress  # noqa: E402
from localaid.adapters.notify import Notifier  # noqa: E402
from localaid.provision import job  # noqa: E402

FAILING = ("CRASH", "HANG", "CHANGED", "FORGED", "FAIL")
BREAKS = set("\n\r\x00\x1b\x0b\x0c\x1c\x1d\x1e\x85\x9b\u2028\u2029")  # line breaks, NUL, ESC, CSI
TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class Row:
    group: str
    input: str
    where: str
    said: str = ""        # first line of what localaid said
    status: str = ""      # exit status or exception type
    unchanged: str = ""   # how "nothing changed" was verified
    verdict: str = "ok"


# ------------------------------------------------------------------------------------ helpers
def esc(value: str | bytes, n: int = 44) -> str:
    """One short line: control and invisible characters escaped, long values cut."""
    s = repr(value)[2:-1] if isinstance(value, bytes) else \
        "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    return s if len(s) <= n else s[:n - 3] + "..."


def first_line(text: str, root: Path | None = None, n: int = 100) -> str:
    text = text.replace(str(root), "@") if root else text
    return esc(next((t for t in text.splitlines() if t.strip()), text), n)


def fingerprint(*roots: str | Path) -> str:
    """Names, types, modes, times and contents below `roots` (a FIFO is never opened)."""
    h = hashlib.sha256()
    for root in map(str, roots):
        walk = [(d, sorted(ds + fs)) for d, ds, fs in sorted(os.walk(root))]
        for p in [root] + [os.path.join(d, n) for d, names in walk for n in names]:
            st = os.lstat(p)
            h.update(f"{p} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}\n".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
    return h.hexdigest()[:8]


@contextlib.contextmanager
def alarm(seconds: float):
    """TimeoutError when the block runs longer (in the main thread; elsewhere no guard)."""
    def ring(*_):
        raise TimeoutError(f"still running after {seconds:g} s")
    try:
        old = signal.signal(signal.SIGALRM, ring)
    except ValueError:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """`python3 -m localaid ARGV` → (exit status, stderr + stdout); -9 when it hangs."""
    full = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"} | (env or {})
    try:
        r = subprocess.run([sys.executable, "-m", "localaid", *argv], cwd=REPO, env=full,
                           capture_output=True, text=True, errors="replace", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return -9, "timed out after 30 s"
    return r.returncode, r.stderr + r.stdout


def write(path: Path, content, mode: int = 0o644) -> None:
    """content: text, bytes, or a function making `path` (a directory, a FIFO, a link)."""
    if callable(content):
        return content(path)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    os.chmod(path, mode)


# ------------------------------------------------------------------------- 1. configuration
def _bomb() -> str:
    lines = ['l0: &l0 "lol"'] + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nhealth: *l9\n"


def _link(p: Path) -> None:
    (p.parent.parent / "other.yaml").write_text("health:\n  interval: 2s\n")
    os.symlink("../other.yaml", p)


# (input shown, main file[, conf.d files {name: content} | the main file's mode])
CONFIG_CASES = [
    ('ollama.port: "11434" (quoted)', 'ollama:\n  port: "11434"\n'),
    ("webui.version: [0.6.5] (a list)", "webui:\n  version: [0.6.5]\n"),
    ("webui.enabled: yes", "webui:\n  enabled: yes\n"),
    ("top level is a list", "- ollama\n- webui\n"),
    ("health.intervall (typo)", "health:\n  intervall: 2s\n"),
    ("olama: (typo of a section)", "olama:\n  port: 11434\n"),
    ("health.interval: 100ms (below range)", "health:\n  interval: 100ms\n"),
    ("health.interval: 10^20 h", "health:\n  interval: 100000000000000000000h\n"),
    ("health.timeout: 5 (no unit)", "health:\n  timeout: 5\n"),
    ("model_load_grace: -5m", "health:\n  model_load_grace: -5m\n"),
    ("gpu_overhead: -1GB", "ollama:\n  gpu_overhead: -1GB\n"),
    ("gpu_overhead: -5 (bare bytes)", "ollama:\n  gpu_overhead: -5\n"),
    ("gpu_overhead: 10^30 TiB", "ollama:\n  gpu_overhead: 1" + "0" * 30 + "TiB\n"),
    ("context_length: 10^40", "ollama:\n  context_length: 1" + "0" * 40 + "\n"),
    ('webui.listen: ":3000"', 'webui:\n  listen: ":3000"\n'),
    ('metrics.listen: "::1:9101"', 'metrics:\n  listen: "::1:9101"\n'),
    ('webui.listen: "$(id):3000"', 'webui:\n  listen: "$(id):3000"\n'),
    ('webui.listen: "127.0.0.1:70000"', 'webui:\n  listen: "127.0.0.1:70000"\n'),
    ("install_script: ftp://", "ollama:\n  install_script: ftp://example.org/install.sh\n"),
    ("install_script: http:// (no allow_http)", "ollama:\n  install_script: http://example.org/install.sh\n"),
    ("install_script: HTTP:// (no allow_http)", "ollama:\n  install_script: HTTP://example.org/install.sh\n"),
    ("webui.index_url: file:///etc", "webui:\n  index_url: file:///etc/passwd\n"),
    ('models: ["llama3; rm -rf /"]', 'ollama:\n  models: ["llama3; rm -rf /"]\n'),
    ('models: ["$(id)"]', 'ollama:\n  models: ["$(id)"]\n'),
    ("models: [`reboot`:latest]", 'ollama:\n  models: ["`reboot`:latest"]\n'),
    ("environment: OLLAMA_HOST (managed)", "ollama:\n  environment:\n    OLLAMA_HOST: 0.0.0.0\n"),
    ("webui.environment: DATA_DIR (managed)", "webui:\n  environment:\n    DATA_DIR: /srv\n"),
    ("environment: MY-VAR (bad name)", "ollama:\n  environment:\n    MY-VAR: x\n"),
    ('environment value "x\\nMAINPID=1"', 'ollama:\n  environment:\n    A: "x\\nMAINPID=1"\n'),
    ('admin.name: "a\\nb"', 'webui:\n  admin:\n    name: "a\\nb"\n'),
    ('ollama.version: "0.9.1/../.."', 'ollama:\n  version: "0.9.1/../.."\n'),
    ("10,000-deep nesting", "health: " + "[" * 10_000 + "]" * 10_000 + "\n"),
    ("billion laughs (10^9 aliases)", _bomb()),
    ("binary garbage (4 kB)", random.Random(7).randbytes(4096)),
    ("UTF-16 file", "health:\n  interval: 2s\n".encode("utf-16")),
    ("NUL byte in a value", b"webui:\n  admin:\n    name: a\x00b\n"),
    ("5 MB file", b"# padding\n" * 524_288),
    ("a directory", lambda p: p.mkdir()),
    ("a FIFO", os.mkfifo),
    ("group-writable file (as root)", "health:\n  interval: 2s\n", 0o664),
    ("symlink in conf.d", "", {"10-link.yaml": _link}),
    ("bad value in conf.d", "", {"10-x.yaml": "ollama:\n  keep_alive: -1\n"}),
    ("duplicate keys", "health:\n  interval: 1s\n  interval: 2s\n"),
    ("tab indentation", "health:\n\tinterval: 1s\n"),
    ("two documents", "health: {}\n---\nmetrics: {}\n"),
]


def group_config(root: Path) -> list[Row]:
    rows = []
    for i, (label, main, *extra) in enumerate(CONFIG_CASES):
        conf_d = next((e for e in extra if isinstance(e, dict)), {})
        mode = next((e for e in extra if isinstance(e, int)), None)
        row = Row("config", label, "load() + config check")
        rows.append(row)
        if mode is not None and os.geteuid() != 0:
            row.said, row.status, row.unchanged, row.verdict = "not run", "-", "skipped: needs root", "skipped"
            continue
        d = root / f"c{i:02d}"
        (d / "conf.d").mkdir(parents=True)
        for p in (d, d / "conf.d"):
            os.chmod(p, 0o755)
        path, drop_ins = d / "localaid.yaml", d / "conf.d"
        write(path, main, mode or 0o644)
        for name, content in conf_d.items():
            write(drop_ins / name, content)
        before = fingerprint(d)
        try:
            with alarm(15):   # trust checks (owner, modes) only for the case that is about them
                config_mod.load(str(path), conf_d=str(drop_ins), trusted_uid=None if mode is None else 0)
            row.said, row.status, row.verdict = "(no problem reported)", "returned a Config", "accepted"
        except config_mod.ConfigError as e:
            row.said, row.status = first_line(str(e), d), "ConfigError"
        except Exception as e:  # noqa: BLE001 - anything else is what this bench looks for
            row.said, row.status, row.verdict = first_line(f"{type(e).__name__}: {e}", d), type(e).__name__, "CRASH"
        rc, out = cli(["--config", str(path), "--conf-d", str(drop_ins), "config", "check"])
        row.status += f"; exit {rc}"
        if TRACEBACK in out or rc not in (0, 1, 78):
            row.verdict, row.said = "CRASH", first_line((out.strip().splitlines() or [""])[-1], d)
        elif rc == 0 and row.verdict == "ok":
            row.verdict = "accepted"
        after = fingerprint(d)
        row.unchanged = f"yes (tree {after})" if after == before else f"NO (tree {before} -> {after})"
        row.verdict = row.verdict if after == before else "CHANGED"
    return rows


# ------------------------------------------------------------------------------ 2. CLI values
BAD_VERSIONS = ["..", "/", "0.12.4/../..", "", "$(id)", ";rm -rf /", "`id`", "0.12.4\nMAINPID=1", "1" * 200,
                "\uff10.\uff11\uff12.\uff14", "\u0660.\u0661\u0662.\u0664", "0.12.4 ", "-1", "v",
                "../../../etc/passwd", "0.12.4\r", "1.0;reboot", "1..2", "0.12.4\u2028"]
SYSTEM_PATHS = ["/var/lib/localaid", "/run/localaid", "/etc/localaid", "/usr/local/bin/ollama",
                "/etc/systemd/system/ollama.service.d", "/etc/systemd/system/open-webui.service"]


def _system() -> str:
    """Type, mode and time of what an upgrade would touch on this machine (not their contents)."""
    def one(p: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(p)
            return f"{p} {st.st_mode:o} {st.st_mtime_ns}"
        return f"{p} absent"
    return hashlib.sha256("\n".join(map(one, SYSTEM_PATHS)).encode()).hexdigest()[:8]


def group_cli(root: Path) -> list[Row]:
    for d in ("state", "run", "etc/conf.d"):
        os.makedirs(root / d, mode=0o755)
    os.chmod(root / "etc", 0o755)
    write(root / "etc/localaid.yaml", "health:\n  interval: never  # invalid on purpose: a tripwire\n")
    env = {"LOCALAID_STATE_DIR": str(root / "state"), "LOCALAID_RUN_DIR": str(root / "run"),
           "LOCALAID_CONFIG": str(root / "etc/localaid.yaml"), "LOCALAID_CONFIG_D": str(root / "etc/conf.d")}
    rows = []
    for value in BAD_VERSIONS:
        row = Row("cli", value, "upgrade webui|ollama --version")
        rows.append(row)
        before = fingerprint(root), _system()
        results = [cli(["--config", env["LOCALAID_CONFIG"], "upgrade", c, f"--version={value}"], env)
                   for c in ("webui", "ollama")]
        after = fingerprint(root), _system()
        row.status = " / ".join(f"exit {rc}" for rc, _ in results)
        out = next((o for rc, o in results if rc != 2), results[0][1])
        row.said = first_line("\n".join(t.split("error: argument --version: ")[-1] for t in out.splitlines()
                                        if not t.startswith("usage:")) or out)
        if any(TRACEBACK in o for _, o in results):
            row.verdict = "CRASH"
        elif any(rc != 2 for rc, _ in results):
            row.verdict = "accepted"      # only the tripwire configuration stopped it
        row.unchanged = f"yes (tree {after[0]}, system {after[1]})" if after == before else "NO"
        row.verdict = row.verdict if after == before else "CHANGED"
    return rows


# ---------------------------------------------------------------------------- 3. hostile text
HOSTILE = ["pulling manifest\nMAINPID=1", "50%\rREADY=1", "\x1b[2J\x1b[1;1Hscreen cleared",
           "nul\x00byte\x00MAINPID=1", "error\u2028MAINPID=1", "para\u2029READY=1", "nel\x85WATCHDOG=1",
           "vt\x0bff\x0cfs\x1cgs\x1drs\x1eSTOPPING=1", "\x9b2J C1 CSI \x7f DEL",
           'Error: {"error":"manifest unknown"}\nSTATUS=hacked\nREADY=1', "\n\n\nREADY=1\n",
           'tab\tkey=value "quoted" back\\slash', "x" * 10_000, "registry error \ud800 (lone surrogate)"]


def _pull_error(text: str) -> str:
    """`text` as Ollama's pull stream carries an error ({"error": ...}) → the PullError's words."""
    try:
        from localaid.adapters.ollama import OllamaError, parse_pull_line
    except Exception:  # noqa: BLE001 - the adapters are being edited by others: the raw text then
        return text
    try:
        parse_pull_line(json.dumps({"error": text}))
    except OllamaError as e:
        return str(e)
    return text


def _hostile_row(text: str, notifier: Notifier, sock: socket.socket) -> Row:
    row = Row("hostile", text, "Reporter.line/step/warn/failed, format_line, Notifier")
    buf = io.BytesIO()
    log.stream = io.TextIOWrapper(buf, encoding="utf-8", errors="strict", write_through=True)
    rep = job.Reporter("bench-hostile", terminal=False)
    calls = {"Reporter.line": lambda: rep.line(text, "installer"), "Reporter.step": lambda: rep.step(text),
             "Reporter.warn": lambda: rep.warn(f"model m could not be pulled: {_pull_error(text)}"),
             "Reporter.failed": lambda: rep.failed(text, tail=[text]),
             "format_line": lambda: log.format_line(log.ERR, text, {"error": text}),
             "Notifier.status": lambda: notifier.status(text), "Notifier.ready": lambda: notifier.ready(text)}
    done, crashes, forged, datagrams = {}, [], [], []
    for name, call in calls.items():
        try:
            done[name] = call()
        except Exception as e:  # noqa: BLE001
            crashes.append((name, e))
            continue
        if name.startswith("Notifier"):
            with contextlib.suppress(OSError):
                datagrams.append(sock.recv(1 << 20).split(b"\n"))
            fields = datagrams[-1] if datagrams else []
            want = [b"STATUS="] if name == "Notifier.status" else [b"READY=", b"STATUS=", b"MAINPID="]
            if [f.partition(b"=")[0] + b"=" for f in fields] != want or (
                    len(want) == 3 and fields[2] != b"MAINPID=%d" % os.getpid()):
                forged.append(f"{name} sent {esc(b' | '.join(fields), 60)}")
    journal = buf.getvalue().decode("utf-8", "replace").split("\n")[:-1]
    emitted = sum(n.startswith("Reporter") for n in done)
    if len(journal) != emitted or any(t[:1] != "<" or BREAKS & set(t) for t in journal):
        forged.append(f"journal: {len(journal)} lines for {emitted} events")
    if BREAKS & set(done.get("format_line", "")):
        forged.append("format_line: a line break or escape kept")
    p = progress.read("bench-hostile")
    if p is None or BREAKS & set(p.text + "".join(p.detail)):
        forged.append("progress file: " + ("unreadable" if p is None else "a line break or escape kept"))
    if crashes:
        row.said = first_line(f"{type(crashes[0][1]).__name__}: {crashes[0][1]}")
        row.status = f"{type(crashes[0][1]).__name__} in " + ", ".join(n for n, _ in crashes)
    else:
        row.said, row.status = esc(datagrams[0][0].decode("utf-8", "replace"), 100), "no exception"
    row.unchanged = "; ".join(forged) or f"yes: {len(journal)} journal lines, {len(datagrams)} datagrams as sent"
    row.verdict = "CRASH" if crashes else "FORGED" if forged else "ok"
    return row


def group_hostile(root: Path) -> list[Row]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(root / "notify.sock"))
    sock.settimeout(1)
    notifier = Notifier(str(root / "notify.sock"))
    saved = log.stream, paths.PROGRESS_DIR
    paths.PROGRESS_DIR = str(root / "progress")
    try:
        return [_hostile_row(t, notifier, sock) for t in HOSTILE]
    finally:
        log.stream, paths.PROGRESS_DIR = saved
        sock.close()


# ------------------------------------------------------------------------------- 4. downloads
class Site:
    """https://127.0.0.1:P (the unit tests' CA), a plain http twin, and a TCP listener posing as
    an ftp server; `hits` records what was asked of each. Every script served would create
    `marker` if it ran."""

    def __init__(self, root: Path):
        sys.path.insert(0, str(REPO / "tests/fakes/ollama"))
        from server import make_ca  # the test CA and its certificate for 127.0.0.1
        self.certs, self.marker, self.hits, self.stop = make_ca(root / "tls"), root / "EXECUTED", [], threading.Event()
        # Shaped as Ollama's installer is (tests/fakes/ollama/install.sh.in): the whole body in
        # main(), so that `sh -n` tells a script cut anywhere from a whole one.
        self.script = (f"#!/bin/sh\nmain() {{\n    set -eu\n    touch {self.marker}\n"
                       + "    echo installing\n" * 30 + "    if [ -d /tmp ]; then\n"
                       + "        echo still installing\n" * 30 + "    fi\n}\n\nmain\n").encode()
        site, s = self, self.script

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def send(self, code, body=b"", length=None, headers=(), pieces=(), chunked=False):
                self.send_response(code)
                for k, v in headers + ((("Transfer-Encoding", "chunked"),) if chunked else
                                       (("Content-Length", str(len(body) if length is None else length)),)):
                    self.send_header(k, v)
                self.end_headers()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.wfile.write(body)
                    for p in pieces:
                        if site.stop.is_set():
                            break
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p) if chunked else p)

            def do_GET(self):
                site.hits.append(f"{self.server.name}{self.path}")
                to = {"/redir-http": f"http://127.0.0.1:{site.plain_port}/ok",
                      "/redir-HTTP": f"HTTP://127.0.0.1:{site.plain_port}/ok",
                      "/redir-ftp": f"ftp://127.0.0.1:{site.ftp_port}/install.sh",
                      "/redir-file": "file:///etc/passwd", "/redir-loop": "/redir-loop"}.get(self.path)
                if to:
                    return self.send(302, headers=(("Location", to),))
                {"/ok": lambda: self.send(200, s), "/500": lambda: self.send(500, b"Internal Server Error\n"),
                 "/html": lambda: self.send(200, b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>"
                                            + b" " * 400, headers=(("Content-Type", "text/html"),)),
                 "/truncated": lambda: self.send(200, s[:len(s) * 3 // 4]),
                 "/lying": lambda: self.send(200, s, length=100_000),
                 "/short-length": lambda: self.send(200, s + s, length=300),
                 "/big": lambda: self.send(200, length=10_000_000, pieces=(s[:1000] * 1000 for _ in range(10))),
                 "/endless": lambda: self.send(200, pieces=(b"echo filler\n" * 5000 for _ in range(2000)),
                                               chunked=True),
                 "/drip": lambda: self.send(200, length=len(s),  # 4 bytes a second, for 12 s at most
                                            pieces=(time.sleep(0.25) or s[i:i + 1] for i in range(48))),
                 "/empty": lambda: self.send(200),
                 "/json": lambda: self.send(200, b'{"error":"not found"}' + b" " * 300),
                 "/nul": lambda: self.send(200, s.replace(b"echo installing\n", b"echo \0\n")),
                 }.get(self.path, lambda: self.send(404, b"Not Found\n"))()

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(self.certs["server_crt"]), str(self.certs["server_key"]))

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_):
                pass  # clients hanging up is what they are for

            def __init__(self, name):
                self.name = name
                super().__init__(("127.0.0.1", 0), Handler)

            def get_request(self):
                sock, addr = super().get_request()
                wrap = self.name == "https"
                return (tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) if wrap else sock), addr

        self.servers = [Server("https"), Server("http")]
        self.url = f"https://127.0.0.1:{self.servers[0].server_address[1]}"
        self.plain_port = self.servers[1].server_address[1]
        self.ftp = socket.create_server(("127.0.0.1", 0))
        self.ftp_port = self.ftp.getsockname()[1]
        for target in [s.serve_forever for s in self.servers] + [self._ftp]:
            threading.Thread(target=target, daemon=True).start()

    def _ftp(self):
        with contextlib.suppress(OSError):
            while True:
                self.ftp.accept()[0].close()
                self.hits.append("ftp")

    def close(self):
        self.stop.set()
        for s in self.servers:
            s.shutdown()
            s.server_close()
        self.ftp.close()


def group_download(root: Path, budget: float = 4.0) -> list[Row]:
    try:   # the Ollama provisioning is being split into a package by others: find obtain_script
        from localaid.provision import ollama as prov
        obtain = getattr(prov, "obtain_script", None) \
            or importlib.import_module(prov.__name__ + ".script").obtain_script
        mod = sys.modules[obtain.__module__]
    except Exception as e:  # noqa: BLE001
        return [Row("download", "(whole group)", "localaid.provision.ollama", f"not run: {first_line(repr(e))}",
                    type(e).__name__, "-", "skipped")]
    where = f"{os.path.relpath(inspect.getsourcefile(obtain), REPO)}:obtain_script"
    documented = tuple({getattr(mod, n) for n in ("ProvisionError", "JobError", "ScriptError") if hasattr(mod, n)}
                       | {job.JobError})
    site = Site(root)
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = f"https://127.0.0.1:{s.getsockname()[1]}/install.sh"
    u, plain = site.url, f"http://127.0.0.1:{site.plain_port}"
    cases = [("404 Not Found", u + "/404"), ("500 Internal Server Error", u + "/500"),
             ("HTML page (captive portal)", u + "/html"), ("truncated script (3/4: sh -n)", u + "/truncated"),
             ("Content-Length 100000, body 1.3 kB", u + "/lying"),
             ("Content-Length 300, body 2.6 kB", u + "/short-length"),
             ("10 MB body", u + "/big"), ("chunked endless body", u + "/endless"),
             ("drip 4 bytes/s past the deadline", u + "/drip"), ("redirect to http://", u + "/redir-http"),
             ("redirect to HTTP:// (upper case)", u + "/redir-HTTP"), ("redirect to ftp://", u + "/redir-ftp"),
             ("redirect to file:///etc/passwd", u + "/redir-file"), ("redirect loop", u + "/redir-loop"),
             ("empty 200 body", u + "/empty"), ("JSON error body, no #!", u + "/json"),
             ("NUL bytes in the script", u + "/nul"), ("sha256 pin mismatch", u + "/ok#sha"),
             ("http:// URL, allow_http false", plain + "/ok"),
             ("ftp:// URL (config bypassed)", f"ftp://127.0.0.1:{site.ftp_port}/install.sh"),
             ("untrusted certificate", u + "/ok#untrusted"), ("connection refused", closed),
             ("HTTP:// URL in the config", f"HTTP://127.0.0.1:{site.plain_port}/ok#config"),
             ("(control) the good script", u + "/ok#control")]
    saved = getattr(mod, "_ssl_context", None), log.stream
    log.stream = io.StringIO()
    try:
        return [_download_row(label, url, mod, obtain, where, documented, site, budget) for label, url in cases]
    finally:
        if saved[0] is not None:
            mod._ssl_context = saved[0]
        log.stream = saved[1]
        site.close()


def _download_row(label, url, mod, obtain, where, documented, site, budget) -> Row:
    url, _, how = url.partition("#")
    row, said = Row("download", label, where), ""
    mod._ssl_context = ssl.create_default_context if how == "untrusted" else \
        (lambda: ssl.create_default_context(cafile=str(site.certs["ca_crt"])))
    cfg = dataclasses.replace(config_mod.OllamaConfig(), install_script=url,
                              install_script_sha256="0" * 64 if how == "sha" else None)
    if how == "config":   # the real way in: the configuration first
        write(site.marker.parent / "http-upper.yaml", f"ollama:\n  install_script: {url}\n")
        try:
            cfg = config_mod.load(str(site.marker.parent / "http-upper.yaml"), None, trusted_uid=None).ollama
            row.where, said = "load() -> " + where, "load() accepted it; "
        except config_mod.ConfigError as e:
            row.said, row.status, row.unchanged = first_line(str(e)), "ConfigError", "yes: nothing downloaded"
            return row
    slept = [0.0]   # retries wait on a clock that jumps instead of sleeping
    site.hits.clear()
    t0 = time.monotonic()
    try:
        with alarm(budget + 25):
            data = obtain(cfg, job.Reporter(None, terminal=False), budget,
                          sleep=lambda s: slept.__setitem__(0, slept[0] + s), clock=lambda: time.monotonic() + slept[0])
        row.said, row.status, row.verdict = f"returned {len(data)} bytes", "no error", \
            "ok" if how == "control" else "accepted"
    except documented as e:
        row.said, row.status = first_line(said + str(e)), type(e).__name__
        row.verdict = "FAIL" if how == "control" else "ok"
    except Exception as e:  # noqa: BLE001
        row.said, row.status, row.verdict = first_line(f"{type(e).__name__}: {e}"), type(e).__name__, "CRASH"
    took = time.monotonic() - t0
    elsewhere = sorted({h for h in site.hits if not h.startswith("https")})
    row.unchanged = ("NO: the script ran" if site.marker.exists() else "yes: not run") + f", {took:.1f} s" + \
        (f", fetched {', '.join(elsewhere)}" if elsewhere else "")
    if site.marker.exists():
        row.verdict = "CHANGED"
    elif row.verdict == "ok" and took > budget + 3:
        row.verdict = "HANG"          # the server stopped dripping before localaid stopped waiting
    elif row.verdict == "ok" and elsewhere:
        row.verdict = "accepted"      # it went to a scheme it should have refused
    return row


# ------------------------------------------------------------------------------------ output
GROUPS = {"config": group_config, "cli": group_cli, "hostile": group_hostile, "download": group_download}
HEADER = ["#", "group", "input", "where", "what localaid said", "status", "nothing changed", "verdict"]


def run(groups=tuple(GROUPS)) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="localaid-bad-inputs-") as tmp:
        for g in groups:
            os.makedirs(os.path.join(tmp, g), mode=0o755)
            rows += GROUPS[g](Path(tmp) / g)
    return rows


def render(rows: list[Row], md: bool) -> str:
    table = [[str(i), r.group, esc(r.input), r.where, r.said, r.status, r.unchanged, r.verdict]
             for i, r in enumerate(rows, 1)]
    if not md:
        widths = [max(len(t[j]) for t in table + [HEADER]) for j in range(len(HEADER))]
        return "\n".join([" | ".join(h.ljust(w) for h, w in zip(HEADER, widths)), "-+-".join("-" * w for w in widths)]
                         + [" | ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table])

    def cell(s: str, code: bool) -> str:
        s = s.replace("|", "\\|")
        if code:
            return "(empty)" if not s else f"`` {s} ``" if "`" in s else f"`{s}`"
        return s.replace("<", "&lt;").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
    return "\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
                     + ["| " + " | ".join(cell(c, j == 2) for j, c in enumerate(t)) + " |" for t in table])


def summary(rows: list[Row]) -> str:
    lines = []
    for g in GROUPS:
        if mine := [r.verdict for r in rows if r.group == g]:
            lines.append(f"{g}: {len(mine)} inputs, " + ", ".join(f"{mine.count(v)} {v}" for v in dict.fromkeys(mine)))
    bad = [f"  #{i} {r.group} {esc(r.input)}: {r.verdict}: {r.said}" for i, r in enumerate(rows, 1)
           if r.verdict not in ("ok", "skipped")]
    return "\n".join(lines + (["findings:"] + bad if bad else ["findings: none"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="a Markdown table")
    fmt.add_argument("--json", action="store_true", help="one JSON object: the rows and how many failed")
    ap.add_argument("--group", default=",".join(GROUPS), help="comma-separated, of: " + ",".join(GROUPS))
    args = ap.parse_args(argv)
    groups = [g for g in args.group.split(",") if g]
    if unknown := set(groups) - set(GROUPS):
        ap.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    t0 = time.monotonic()
    rows = run(groups)
    failing = [r for r in rows if r.verdict in FAILING]
    if args.json:
        print(json.dumps({"rows": [dataclasses.asdict(r) for r in rows], "failing": len(failing),
                          "seconds": round(time.monotonic() - t0, 1)}, indent=1))
    else:
        print(f"{render(rows, args.md)}\n\n{summary(rows)}\n{len(rows)} inputs in {time.monotonic() - t0:.1f} s; "
              f"{len(failing)} crashed, hung, changed something, forged a field or failed a control")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
