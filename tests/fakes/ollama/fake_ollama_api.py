"""The fake Ollama's HTTP API and loaded models (served by tests/fakes/ollama/ollama).

Routes, with the shapes of shared/research/ollama-api.md: GET/HEAD /, /api/version, /api/tags,
/api/ps (size_vram: what the GPU holds of each model, fake_ollama_gpu.py), POST /api/pull (NDJSON
progress; an error after HTTP 200 as a last {"error": ...} line), /api/generate and /api/chat (no
prompt or messages: load; keep_alive 0: unload; negative: forever; else a streamed or single
answer with counts), /api/embed ({"input": str | [str]} → {"embeddings": [[...], ...]}),
/api/show (404 for unknown), DELETE /api/delete. Each loaded model has its runner child
(fake_ollama_runner.py), which computes the answers one request at a time; the server queues
the others, and keeps answering everything else while a runner works or is wedged. A model whose GPU runner died (the GPU lost
after start) fails the next request that runs it with HTTP 500 and the CUDA error, and is
unloaded. Bound to loopback, a request whose Host header is not loopback/private/localhost gets
403 (the DNS-rebinding guard). Fault switches come from server.faults() on every request.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_ollama_store import Store, fake_size, full_name, split_name

FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)
EMBED_DIM = 8


def log(msg, level="INFO", **fields):
    stamp = datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    extra = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in fields.items())
    print(f"time={stamp} level={level} msg={json.dumps(msg)} {extra}".rstrip(), flush=True)


# ------------------------------------------------------------------------------ loaded models
class State:
    """Loaded models: name -> {"expires", "vram", "broken", "runner", "queue"}; the GPU's share
    published. `runner_argv(model)`: the command of a model's runner child (None: answers are
    computed in the server, for tests that embed it without one)."""

    def __init__(self, store, gpu, runner_argv=None):
        self.store = store
        self.gpu = gpu
        self.runner_argv = runner_argv
        self.loaded = {}
        self.lock = threading.Lock()

    def _publish(self):
        self.gpu.publish(sum(e["vram"] for e in self.loaded.values() if not e["broken"]))

    def _expire(self):
        now = datetime.now(timezone.utc)
        # a model with a request at work or waiting is not unloaded (Ollama stops its timer then)
        gone = [n for n, e in self.loaded.items() if e["expires"] <= now and not e["queue"].locked()]
        for n in gone:
            stop_runner(self.loaded.pop(n))
        if gone:
            self._publish()

    def ps(self, cpu_fault):
        out = []
        with self.lock:
            self._expire()
            for name, e in self.loaded.items():
                m = self.store.get(name) or {"size": fake_size(name), "digest": "", "details": {}}
                out.append({"name": name, "model": name, "size": m["size"], "digest": m["digest"],
                            "details": m.get("details", {}), "expires_at": e["expires"].isoformat(),
                            "size_vram": 0 if cpu_fault else e["vram"], "context_length": 4096})
        return sorted(out, key=lambda m: m["expires_at"], reverse=True)  # longest left first, as Ollama

    def load(self, m, keep, slow=0.0):
        """Load (when not loaded) and set the expiry; returns the entry."""
        with self.lock:
            self._expire()
            entry = self.loaded.get(m["name"])
        if entry is None and slow:
            time.sleep(slow)
        with self.lock:
            entry = self.loaded.get(m["name"])
            if entry is None:
                mine = sum(e["vram"] for e in self.loaded.values() if not e["broken"])
                vram = self.gpu.place(m["size"], mine)
                entry = {"vram": vram, "broken": False, "expires": FOREVER, "queue": threading.Lock(),
                         "runner": self._start_runner(m["name"])}
                self.loaded[m["name"]] = entry
                self._publish()
                log("llama runner started", model=m["name"], offload=f"{vram}/{m['size']}",
                    library="cuda" if vram else "cpu")
            entry["expires"] = keep_alive_until(keep)
            return entry

    def _start_runner(self, name):
        if self.runner_argv is None:
            return None
        return subprocess.Popen(self.runner_argv(name), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, bufsize=1)

    def generate(self, name, job):
        """The runner's tokens for `job` (fake_ollama_runner.py), as they come; waits its turn
        behind the requests before it. Without a runner: the words at once."""
        with self.lock:
            entry = self.loaded.get(name)
        runner = entry.get("runner") if entry else None
        if runner is None:
            yield from (job.get("words") or ["fake", " answer"])[:job.get("tokens", 2)]
            return
        with entry["queue"]:
            done = False
            try:
                runner.stdin.write(json.dumps(job) + "\n")
                runner.stdin.flush()
                for line in runner.stdout:
                    if line.startswith("D"):
                        done = True
                        return
                    yield json.loads(line[2:])
            except (OSError, ValueError):
                pass
            finally:
                if not done:  # the client left: the runner finishes that answer before the next one
                    for line in runner.stdout:
                        if line.startswith("D"):
                            break
        raise RuntimeError("llama runner process has terminated")

    def close(self):
        """Every runner ended (a server embedded in a test is done)."""
        with self.lock:
            for entry in self.loaded.values():
                stop_runner(entry)

    def unload(self, name):
        with self.lock:
            entry = self.loaded.pop(name, None)
            if entry is not None:
                stop_runner(entry)
                self._publish()

    def lose_gpu(self, text):
        """The runner's CUDA context died: GPU models fail when next used; their VRAM is free."""
        with self.lock:
            for e in self.loaded.values():
                if e["vram"] > 0:
                    e["broken"] = text
            self._publish()
        log("llama runner terminated", level="ERROR", error=f"CUDA error: {text}")

    def broken(self, name):
        """The CUDA error of a model whose runner died (then unloaded), else None."""
        with self.lock:
            e = self.loaded.get(name)
            if e is None or not e["broken"]:
                return None
            stop_runner(self.loaded.pop(name))
            self._publish()
            return e["broken"]


def stop_runner(entry):
    """End a model's runner (unloaded, expired, its GPU context dead)."""
    runner = entry.get("runner")
    if runner is not None and runner.poll() is None:
        runner.kill()
        threading.Thread(target=runner.wait, daemon=True).start()  # reaped, never a zombie


def keep_alive_until(value):
    if value is None:
        value = os.environ.get("OLLAMA_KEEP_ALIVE", "5m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = 0.0
            for num, unit in re.findall(r"(-?[\d.]+)(ms|h|m|s)?", text):
                seconds += float(num or 0) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}.get(unit, 1)
    if seconds < 0:
        return FOREVER
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def allowed_host(header, bound_loopback):
    if not bound_loopback:
        return True
    host = header or ""
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    try:
        addr = ipaddress.ip_address(host)
        return addr.is_loopback or addr.is_private or addr.is_unspecified
    except ValueError:
        pass
    return host in ("", "localhost", socket.gethostname().lower()) or \
        host.endswith((".localhost", ".local", ".internal"))


def _now():
    return datetime.now(timezone.utc).isoformat()


def embedding(text):
    digest = hashlib.sha256(text.encode()).digest()
    vec = [b / 255 - 0.5 for b in digest[:EMBED_DIM]]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vec]


# -------------------------------------------------------------------------------- the handler
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ollama"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body, ctype="application/json; charset=utf-8"):
        data = body if isinstance(body, bytes) else (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def _gate(self):
        """Faults and the host guard; the faults when the request may be served, else None."""
        f = self.server.faults()
        if f.get("crash"):
            os._exit(2)
        if f.get("hang"):
            while True:
                time.sleep(3600)
        if f.get("slow"):
            time.sleep(float(f["slow"]))
        if not allowed_host(self.headers.get("Host"), self.server.loopback):
            self._send(403, b"", "text/plain")
            return None
        if f.get("http500"):
            self._send(500, {"error": "internal server error (fault switch)"})
            return None
        return f

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        f = self._gate()
        if f is None:
            return
        st = self.server.state
        if self.path == "/":
            self._send(200, "Ollama is running", "text/plain; charset=utf-8")
        elif self.path == "/api/version":
            self._send(200, {"version": self.server.version})
        elif self.path == "/api/tags":
            self._send(200, {"models": st.store.all()})
        elif self.path == "/api/ps":
            self._send(200, {"models": st.ps(bool(f.get("cpu")))})
        else:
            self._send(404, "404 page not found", "text/plain")

    def do_DELETE(self):
        if self._gate() is None:
            return
        body = self._body() or {}
        name = body.get("model") or body.get("name") or ""
        if self.path == "/api/delete" and self.server.state.store.delete(name):
            self._send(200, b"", "text/plain")
        else:
            self._send(404, {"error": f"model '{name}' not found"})

    def do_POST(self):
        f = self._gate()
        if f is None:
            return
        body = self._body()
        if not isinstance(body, dict):
            self._send(400, {"error": "invalid JSON body"})
            return
        name = body.get("model") or body.get("name") or ""
        if self.path == "/api/pull":
            self._pull(name, body, f)
        elif self.path in ("/api/generate", "/api/chat", "/api/embed"):
            self._run(self.path.rsplit("/", 1)[1], name, body, f)
        elif self.path == "/api/show":
            m = self.server.state.store.get(name) if name else None
            if m is None:
                self._send(404, {"error": f"model '{name}' not found"})
            else:
                self._send(200, {"modelfile": f"FROM {m['name']}", "details": m["details"],
                                 "model_info": {"general.architecture": "llama"}, "capabilities": ["completion"]})
        else:
            self._send(404, "404 page not found", "text/plain")

    def _ndjson_head(self):
        """200 and the headers of a streamed NDJSON answer (chunked, as Ollama sends it)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, obj):
        """One NDJSON line as one HTTP chunk, sent at once."""
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _pull(self, name, body, f):
        if not name:
            self._send(400, {"error": "model is required"})
            return
        stream = body.get("stream", True)
        self._ndjson_head()

        def line(obj):
            if stream is not False or "error" in obj or obj.get("status") == "success":
                self._chunk(obj)

        try:
            line({"status": "pulling manifest"})
            if split_name(name)[0].rsplit("/", 1)[-1].startswith("no-such"):
                line({"error": "pull model manifest: file does not exist"})
                return
            size = fake_size(name)
            digest = hashlib.sha256(full_name(name).encode()).hexdigest()
            rate = float(f.get("pull_rate") or 0)
            steps = 8
            for i in range(steps + 1):
                line({"status": f"pulling {digest[:12]}", "digest": "sha256:" + digest,
                      "total": size, "completed": size * i // steps})
                if rate:
                    time.sleep(size / steps / rate)
                if i == steps // 2 and self.server.faults().get("pull_error"):
                    line({"error": str(self.server.faults()["pull_error"])})
                    return
            line({"status": "verifying sha256 digest"})
            line({"status": "writing manifest"})
            with self.server.state.store.lock:
                self.server.state.store.put(name, size, digest)
            log("pulled model", model=full_name(name))
            line({"status": "success"})
        finally:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _run(self, kind, name, body, f):
        """generate, chat or embed: load the model, then answer (nothing to run: a load)."""
        st = self.server.state
        m = st.store.get(name) if name else None
        if m is None:
            self._send(404, {"error": f'model "{name}" not found, try pulling it first'})
            return
        keep = body.get("keep_alive")
        work = {"generate": body.get("prompt"), "chat": body.get("messages"), "embed": body.get("input")}[kind]
        if keep in (0, "0", "0s", "0m") and not work:  # an empty request with keep_alive 0 unloads
            st.unload(m["name"])
            self._send(200, {"model": m["name"], "created_at": _now(), "response": "", "done": True,
                             "done_reason": "unload"})
            return
        if work:
            error = st.broken(m["name"])
            if error is not None:
                log("llama runner process has terminated", level="ERROR", model=m["name"], error=f"CUDA error: {error}")
                self._send(500, {"error": f"llama runner process has terminated: CUDA error: {error}"})
                return
        started = time.monotonic()
        st.load(m, keep, float(f.get("slow_load") or 0))
        took = int((time.monotonic() - started) * 1e9)
        if keep in (0, "0", "0s", "0m"):
            st.unload(m["name"])  # loaded for this answer only, as Ollama does
        if kind == "embed":
            texts = [work] if isinstance(work, str) else list(work or [])
            self._send(200, {"model": m["name"], "embeddings": [embedding(str(t)) for t in texts],
                             "total_duration": took + 1000, "load_duration": took,
                             "prompt_eval_count": sum(len(str(t).split()) for t in texts)})
            return
        if not work:
            key = "message" if kind == "chat" else "response"
            empty = {"role": "assistant", "content": ""} if kind == "chat" else ""
            self._send(200, {"model": m["name"], "created_at": _now(), key: empty, "done": True,
                             "done_reason": "load"})
            return
        self._answer(kind, m["name"], work, body, took, f)

    def _answer(self, kind, name, work, body, took, f):
        prompt = " ".join(str(x.get("content", "")) if isinstance(x, dict) else str(x)
                          for x in (work if isinstance(work, list) else [work]))
        job = runner_job(f, body.get("options"))
        counted = []

        def piece(text, done):
            out = {"model": name, "created_at": _now(), "done": done}
            if kind == "chat":
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            if done:
                out.update(done_reason="stop", total_duration=took + 2000, load_duration=took,
                           prompt_eval_count=len(prompt.split()), prompt_eval_duration=1000,
                           eval_count=len(counted), eval_duration=1000)
            return out

        tokens = self.server.state.generate(name, job)
        try:
            if body.get("stream", True) is False:
                counted.extend(tokens)
                self._send(200, piece("".join(counted), True))
                return
            self._stream(piece, tokens, counted)
        except (RuntimeError, OSError) as e:
            if not counted:
                self._send(500, {"error": str(e)})
        finally:
            tokens.close()

    def _stream(self, piece, tokens, counted):
        """NDJSON chunks as the runner makes its tokens (the status line goes first, as Ollama's)."""
        self._ndjson_head()
        chunk = self._chunk
        for word in tokens:
            counted.append(word)
            chunk(piece(word, False))
        chunk(piece("", True))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def runner_job(f, options):
    """What a generation asks of the runner: two words, unless the faults make it long (gen_tokens,
    gen_rate, gen_cpu) or wedge it (runner_wedge); options.num_predict caps it, as in Ollama."""
    tokens = int(f.get("gen_tokens") or 2)
    if isinstance(options, dict) and isinstance(options.get("num_predict"), int) and options["num_predict"] >= 0:
        tokens = min(tokens, options["num_predict"])
    job = {"tokens": tokens, "rate": float(f.get("gen_rate") or 0), "cpu": float(f.get("gen_cpu") or 0.005),
           "prompt_cpu": 0.02}  # a short prompt's evaluation, a small model's token: the least a runner does
    if f.get("runner_wedge"):  # after that many tokens, or before the end of a shorter answer
        job["wedge_after"] = int(f.get("wedge_after", 3))
    return job


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(host, port, models, gpu, faults, version, runner_argv=None):
    """The HTTP server (not yet serving); `gpu` a fake_ollama_gpu.Gpu, `faults` a callable,
    `runner_argv` the command of a model's runner child (None: no child)."""
    Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = Server((host, port), Handler)
    try:
        server.loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        server.loopback = host == "localhost"
    server.state = State(Store(models), gpu, runner_argv)
    server.faults = faults
    server.version = version
    return server
