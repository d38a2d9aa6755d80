"""Ollama's HTTP API (the subset in shared/research/ollama-api.md), over httpx.

    client = OllamaClient("http://127.0.0.1:11434", timeout=5)
    client.alive()                       # Probe, never raises
    client.ps()                          # (LoadedModel, ...)
    client.pull("llama3.2:1b", on_progress=print)

Every call is bounded: `timeout` for quick calls, `load_timeout` for a model load, and for a pull
`timeout` to connect plus `stall_timeout` between two progress lines (a pull itself may take hours).
One httpx.Client is shared; its connection pool is thread-safe, so the supervisor may call ps()
and preload() from worker threads at the same time.

Host header: httpx sends the URL's host:port. Ollama bound to loopback refuses other Host headers
with 403 (DNS-rebinding guard), so callers use a loopback URL (config.ollama.url maps wildcard
binds to 127.0.0.1 / ::1); a 403 is reported with that explanation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import httpx

from localaid.records import LoadedModel, Probe


class OllamaError(Exception):
    """A call failed; the text is meant for humans ("cannot reach Ollama at ...: connection refused")."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class PullError(OllamaError):
    pass


@dataclass(frozen=True)
class PullProgress:
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True)
class InstalledModel:
    name: str
    size: int
    digest: str = ""
    modified_at: str = ""
    parameter_size: str = ""
    quantization: str = ""


@dataclass(frozen=True)
class RunningModel:
    """A loaded model as /api/ps describes it (LoadedModel plus what `localaid models` shows)."""
    name: str
    size: int
    size_vram: int
    expires_at: str = ""
    context_length: int | None = None

    def loaded(self) -> LoadedModel:
        return LoadedModel(self.name, self.size, self.size_vram)


def parse_pull_line(line: str | bytes) -> PullProgress | None:
    """One NDJSON line of /api/pull → PullProgress; None for a blank line.

    Raises PullError for an {"error": ...} line (Ollama sends those after HTTP 200) and for a
    line that is not a JSON object.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        raise PullError(f"unexpected line in Ollama's pull progress: {text[:120]!r}") from None
    if not isinstance(obj, dict):
        raise PullError(f"unexpected line in Ollama's pull progress: {text[:120]!r}")
    if obj.get("error"):
        raise PullError(str(obj["error"]))
    total, completed = obj.get("total"), obj.get("completed")
    return PullProgress(str(obj.get("status") or ""), obj.get("digest") or None,
                        int(total) if isinstance(total, (int, float)) else None,
                        int(completed) if isinstance(completed, (int, float)) else None)


def parse_running(payload: object) -> tuple[RunningModel, ...]:
    models = payload.get("models") if isinstance(payload, dict) else None
    out = []
    for m in models or ():
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            ctx = m.get("context_length")
            out.append(RunningModel(m["name"], int(m.get("size") or 0), int(m.get("size_vram") or 0),
                                    str(m.get("expires_at") or ""), int(ctx) if isinstance(ctx, int) else None))
    return tuple(out)


def parse_installed(payload: object) -> tuple[InstalledModel, ...]:
    models = payload.get("models") if isinstance(payload, dict) else None
    out = []
    for m in models or ():
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            d = m.get("details") if isinstance(m.get("details"), dict) else {}
            out.append(InstalledModel(m["name"], int(m.get("size") or 0), str(m.get("digest") or ""),
                                      str(m.get("modified_at") or ""), str(d.get("parameter_size") or ""),
                                      str(d.get("quantization_level") or "")))
    return tuple(out)


def same_model(a: str, b: str) -> bool:
    """"llama3" and "llama3:latest" name the same model."""
    def norm(n: str) -> str:
        return n if ":" in n.rpartition("/")[2] else n + ":latest"
    return norm(a) == norm(b)


def installed_size(name: str, installed) -> int:
    """Size of the installed model `name` ("llama3" is "llama3:latest"); 0 when not installed."""
    return next((m.size for m in installed if same_model(name, m.name)), 0)


class OllamaClient:
    def __init__(self, base_url: str, timeout: float = 5.0, load_timeout: float = 300.0,
                 stall_timeout: float = 120.0, verify=True, headers: dict[str, str] | None = None):
        """`verify`: an ssl.SSLContext for an https:// GPU node (the site CA trusted); `headers`:
        its Authorization (never logged: errors name the URL only)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.stall_timeout = stall_timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False, verify=verify,
                                  headers={"User-Agent": "localaid", **(headers or {})})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OllamaClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing
    def _fail(self, e: Exception, timeout: float) -> OllamaError:
        if isinstance(e, httpx.TimeoutException):
            return OllamaError(f"Ollama at {self.base_url} did not answer within {timeout:g} s")
        if isinstance(e, httpx.ConnectError):
            why = str(e) or "connection failed"
            if "refused" in why.lower():
                why = "connection refused"
            return OllamaError(f"cannot reach Ollama at {self.base_url}: {why}")
        return OllamaError(f"request to Ollama at {self.base_url} failed: {e or type(e).__name__}")

    def _status_error(self, resp: httpx.Response, what: str) -> OllamaError:
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict) and body.get("error"):
                detail = str(body["error"])
        except (ValueError, httpx.ResponseNotRead):
            pass
        if resp.status_code == 403 and not detail:
            detail = ("forbidden: Ollama refuses this Host header (DNS-rebinding guard); "
                      "connect through a loopback address")
        return OllamaError(f"{what}: HTTP {resp.status_code} from Ollama" + (f": {detail}" if detail else ""),
                           resp.status_code)

    def _request(self, method: str, path: str, what: str, body: object | None = None,
                 timeout: float | None = None, ok_404: bool = False) -> httpx.Response | None:
        t = self.timeout if timeout is None else timeout
        try:
            resp = self._http.request(method, path, json=body, timeout=t)
        except httpx.HTTPError as e:
            raise self._fail(e, t) from None
        if ok_404 and resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._status_error(resp, what)
        return resp

    def _json(self, resp: httpx.Response, what: str) -> object:
        try:
            return resp.json()
        except ValueError:
            raise OllamaError(f"{what}: Ollama answered something that is not JSON") from None

    # ---- calls
    def alive(self, timeout: float | None = None) -> Probe:
        """GET / → Probe (never raises)."""
        t = self.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            resp = self._http.get("/", timeout=t)
        except httpx.HTTPError as e:
            return Probe(False, time.monotonic() - start, None, str(self._fail(e, t)))
        ok = resp.status_code == 200
        return Probe(ok, time.monotonic() - start, resp.status_code, None if ok else f"HTTP {resp.status_code}")

    def version(self) -> str:
        body = self._json(self._request("GET", "/api/version", "version"), "version")
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise OllamaError("version: no version in Ollama's answer")
        return body["version"]

    def tags(self) -> tuple[InstalledModel, ...]:
        return parse_installed(self._json(self._request("GET", "/api/tags", "list models"), "list models"))

    def running(self) -> tuple[RunningModel, ...]:
        return parse_running(self._json(self._request("GET", "/api/ps", "loaded models"), "loaded models"))

    def ps(self) -> tuple[LoadedModel, ...]:
        return tuple(m.loaded() for m in self.running())

    def show(self, model: str) -> dict | None:
        """Model details, or None when Ollama does not have it (404)."""
        resp = self._request("POST", "/api/show", f"show {model}", {"model": model}, ok_404=True)
        if resp is None:
            return None
        body = self._json(resp, f"show {model}")
        return body if isinstance(body, dict) else {}

    def preload(self, model: str, keep_alive: str | int | None = None) -> float:
        """Load `model` into memory (POST /api/generate without a prompt); seconds it took.

        keep_alive: None for Ollama's default, a negative number to keep it loaded for good,
        0 to unload, or a duration string such as "30m".
        """
        body: dict = {"model": model, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        start = time.monotonic()
        self._request("POST", "/api/generate", f"load {model}", body, timeout=self.load_timeout)
        return time.monotonic() - start

    def unload(self, model: str) -> None:
        self._request("POST", "/api/generate", f"unload {model}", {"model": model, "keep_alive": 0,
                                                                   "stream": False})

    def pull(self, model: str, on_progress: Callable[[PullProgress], None] | None = None) -> None:
        """Download `model`, calling on_progress for every progress line; raises PullError."""
        timeout = httpx.Timeout(self.timeout, read=self.stall_timeout)
        try:
            with self._http.stream("POST", "/api/pull", json={"model": model, "stream": True},
                                   timeout=timeout) as resp:
                if resp.status_code != 200:
                    resp.read()
                    err = self._status_error(resp, f"pull {model}")
                    raise PullError(str(err), err.status)
                self._consume(model, resp.iter_lines(), on_progress)
        except httpx.HTTPError as e:
            if isinstance(e, httpx.ReadTimeout):
                raise PullError(f"pull {model}: no progress from Ollama for {self.stall_timeout:g} s") from None
            raise PullError(f"pull {model}: {self._fail(e, self.timeout)}") from None

    @staticmethod
    def _consume(model: str, lines: Iterable[str], on_progress) -> None:
        success = False
        for line in lines:
            try:
                p = parse_pull_line(line)
            except PullError as e:
                raise PullError(f"pull {model} failed: {e}") from None
            if p is None:
                continue
            if p.status == "success":
                success = True
            if on_progress is not None:
                on_progress(p)
        if not success:
            raise PullError(f"pull {model}: Ollama ended the download without reporting success")
