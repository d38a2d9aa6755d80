"""Open WebUI's admin API. Open WebUI seeds its settings from its environment at its first start
and keeps them in its database after: what localaid configures later is written through here.
For a UI host's failover: which Ollama connections it uses, switching one on or off (its `enable`
flag in OLLAMA_API_CONFIGS; the order is kept), and the list itself; for the set-up job: the
document-embedding engine and model, and the default model of new chats.

    GET  /ollama/config          {"ENABLE_OLLAMA_API", "OLLAMA_BASE_URLS", "OLLAMA_API_CONFIGS"}
    POST /ollama/config/update   the same document back (open-webui 0.12: routers/ollama.py)
    GET  /api/v1/retrieval/embedding, POST /api/v1/retrieval/embedding/update   (routers/retrieval.py)
    GET  /api/v1/configs/models, POST the same   DEFAULT_MODELS for new chats (routers/configs.py)

Both need an admin's token: localaid signs in as webui.admin.email with the password in
webui.admin.password_file (root's, read at each sign-in; it is never on a command line), and
signs in again when the token is refused. Changes are read-modify-write under one lock.
Errors are raised as AdminError with words for STATUS.
"""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlsplit


MARK = "localaid"  # key in a connection's settings: localaid switched it off
# The fields of open-webui 0.12's ModelsConfigForm (routers/configs.py).
MODELS_FORM = ("DEFAULT_MODELS", "DEFAULT_PINNED_MODELS", "MODEL_ORDER_LIST", "DEFAULT_MODEL_METADATA",
               "DEFAULT_MODEL_PARAMS")


class AdminError(Exception):
    pass


class WebUIAdmin:
    def __init__(self, base_url: str, email: str, password_file: str, timeout: float = 3.0):
        self.base_url, self.email, self.password_file, self.timeout = base_url, email, password_file, timeout
        self._token: str | None = None
        self._lock = threading.Lock()

    def connections(self) -> dict[str, tuple[bool, bool, str | None]]:
        """{base URL: (in use, switched off by localaid, its key)} for Open WebUI's Ollama connections
        (the key, a node's bearer token, is compared and never shown).
        localaid marks the connections it switches off in their own settings (MARK), so that
        it puts back only those, after a restart of its own or a reboot too."""
        doc = self._call("GET", "/ollama/config")
        configs = doc.get("OLLAMA_API_CONFIGS") or {}
        out = {}
        for i, url in enumerate(doc.get("OLLAMA_BASE_URLS") or []):
            c = configs.get(str(i)) or {}
            out[url] = (bool(c.get("enable", True)), MARK in c, c.get("key") if isinstance(c.get("key"), str) else None)
        return out

    def embedding(self) -> dict:
        """Open WebUI's document-embedding settings (GET /api/v1/retrieval/embedding)."""
        return self._call("GET", "/api/v1/retrieval/embedding")

    def set_embedding(self, engine: str, model: str, ollama_url: str | None, key: str = "") -> None:
        """`key`: the node's bearer token when `ollama_url` is an https:// GPU node."""
        body: dict = {"RAG_EMBEDDING_ENGINE": engine, "RAG_EMBEDDING_MODEL": model}
        if ollama_url:
            body["ollama_config"] = {"url": ollama_url, "key": key}
        self._call("POST", "/api/v1/retrieval/embedding/update", body)

    def models_config(self) -> dict:
        """Open WebUI's model defaults (GET /api/v1/configs/models): DEFAULT_MODELS, a
        comma-separated string, is the model a new chat starts with."""
        return self._call("GET", "/api/v1/configs/models")

    def set_default_model(self, model: str) -> None:
        """Make `model` the default of new chats. The form's every field is stored as sent
        (a missing one as null), so the whole document goes back with only DEFAULT_MODELS changed."""
        with self._lock:
            doc = self.models_config()
            form = {k: doc.get(k) for k in MODELS_FORM}
            form["DEFAULT_MODELS"] = model
            self._call("POST", "/api/v1/configs/models", form)

    def sync(self, urls, tokens: dict[str, str] | None = None) -> None:
        """Make Open WebUI's connection list webui.ollama_urls (it seeds its settings from
        OLLAMA_BASE_URLS at its first start only), keeping each URL's own settings (its
        `enable` flag among them). `tokens` ({URL without a trailing "/": token}): each https://
        node's bearer token, stored as its connection's `key`, which Open WebUI 0.12 sends as
        `Authorization: Bearer` (utils/headers.py)."""
        tokens = tokens or {}
        with self._lock:
            doc = self._call("GET", "/ollama/config")
            old = list(doc.get("OLLAMA_BASE_URLS") or [])
            configs = doc.get("OLLAMA_API_CONFIGS") or {}
            by_url = {u: configs.get(str(i)) for i, u in enumerate(old) if configs.get(str(i))}
            new = {}
            for i, u in enumerate(urls):
                c = dict(by_url.get(u) or {})
                if u.rstrip("/") in tokens:
                    c["key"] = tokens[u.rstrip("/")]
                if c:
                    new[str(i)] = c
            self._call("POST", "/ollama/config/update", {
                "ENABLE_OLLAMA_API": doc.get("ENABLE_OLLAMA_API", True), "OLLAMA_BASE_URLS": list(urls),
                "OLLAMA_API_CONFIGS": new})

    def set_enabled(self, url: str, enabled: bool) -> None:
        with self._lock:
            doc = self._call("GET", "/ollama/config")
            urls = list(doc.get("OLLAMA_BASE_URLS") or [])
            if url not in urls:
                raise AdminError(f"{url} is not one of Open WebUI's Ollama connections")
            configs = dict(doc.get("OLLAMA_API_CONFIGS") or {})
            key = str(urls.index(url))
            configs[key] = {**(configs.get(key) or {}), "enable": enabled}
            if enabled:
                configs[key].pop(MARK, None)
            else:
                configs[key][MARK] = "switched off by localaid: the node did not answer"
            self._call("POST", "/ollama/config/update", {"ENABLE_OLLAMA_API": doc.get("ENABLE_OLLAMA_API", True),
                                                         "OLLAMA_BASE_URLS": urls, "OLLAMA_API_CONFIGS": configs})

    # ------------------------------------------------------------------------------- HTTP
    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._signin()
            status, doc = self._request(method, path, body, self._token)
            if status == 401 and attempt == 1:
                self._token = None
                continue
            if status != 200 or not isinstance(doc, dict):
                raise AdminError(f"{method} {path}: HTTP {status}")
            return doc
        raise AdminError(f"{method} {path}: refused")

    def _signin(self) -> str:
        try:
            with open(self.password_file) as f:
                password = f.read().strip()
        except OSError as e:
            raise AdminError(f"cannot read {self.password_file}: {e.strerror}") from None
        status, doc = self._request("POST", "/api/v1/auths/signin", {"email": self.email, "password": password})
        token = doc.get("token") if isinstance(doc, dict) else None
        if status != 200 or not token:
            raise AdminError(f"admin sign-in refused (HTTP {status}): was the password changed in Open WebUI? "
                             f"put it in {self.password_file}")
        return str(token)

    def _request(self, method: str, path: str, body: dict | None, token: str | None = None):
        parts = urlsplit(self.base_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            raw = resp.read(1 << 20)
        except (OSError, http.client.HTTPException) as e:
            raise AdminError(f"{method} {path}: {e or type(e).__name__}") from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, None
