"""The fake's Ollama connections, as open-webui 0.12's routers/ollama.py has them: the list from
OLLAMA_BASE_URLS (";"-separated) or OLLAMA_BASE_URL stored at the first start, then only from the
database (a changed environment is ignored, as Open WebUI's persistent config does); the
admin's GET /ollama/config and POST /ollama/config/update (per-connection `enable` flags in
OLLAMA_API_CONFIGS); the model defaults (GET/POST /api/v1/configs/models, seeded from
DEFAULT_MODELS at the first start; the form's first three fields are required and every field
is stored as sent, as in routers/configs.py); and POST /api/chat/completions, sent to one connection picked at random
among the enabled ones, with no health check and Open WebUI's long client timeout
(AIOHTTP_CLIENT_TIMEOUT, 300 s): a node that is down fails or stalls the chats sent to it. A
connection's `key` goes to its node as `Authorization: Bearer` (utils/headers.py), and an
https:// node is verified against AIOHTTP_CLIENT_SSL_CERT_FILE alone when it is set (env.py):
a node that refuses the key (401) or whose certificate is not trusted fails the chats sent to it."""

from __future__ import annotations

import json
import os
import random
import ssl
import urllib.error
import urllib.request


def _urls() -> list[str]:
    many = os.environ.get("OLLAMA_BASE_URLS")
    if many:
        return [u.strip().rstrip("/") for u in many.split(";") if u.strip()]
    return [os.environ.get("OLLAMA_BASE_URL", "http://localhost:11434").rstrip("/")]


def seed(db) -> None:
    """At start, as open-webui's seed_registered_defaults(): the environment's list is stored
    once; from then on the database's list is used and OLLAMA_BASE_URLS is ignored."""
    if db.config("ollama.base_urls", "null") == "null":
        db.set_config("ollama.base_urls", json.dumps(_urls()))
    if db.config("ui.models_config", "null") == "null":  # DEFAULT_MODELS: the same, once
        db.set_config("ui.models_config", json.dumps({**dict.fromkeys(MODELS_FORM),
                                                      "DEFAULT_MODELS": os.environ.get("DEFAULT_MODELS")}))
    if db.config("rag.embedding", "null") == "null":  # the same for the document embedding settings
        db.set_config("rag.embedding", json.dumps({
            "RAG_EMBEDDING_ENGINE": os.environ.get("RAG_EMBEDDING_ENGINE", ""),
            "RAG_EMBEDDING_MODEL": os.environ.get("RAG_EMBEDDING_MODEL", "sentence-transformers/all-MiniLM-L6-v2"),
            "ollama_config": {"url": os.environ.get("RAG_OLLAMA_BASE_URL", _urls()[0]), "key": ""}}))


MODELS_FORM = ("DEFAULT_MODELS", "DEFAULT_PINNED_MODELS", "MODEL_ORDER_LIST", "DEFAULT_MODEL_METADATA",
               "DEFAULT_MODEL_PARAMS")


def models_config(db) -> dict:
    return json.loads(db.config("ui.models_config", "null")) or dict.fromkeys(MODELS_FORM)


def set_models_config(db, form: dict) -> dict | None:
    """None (HTTP 422) when a required field is missing or has the wrong type."""
    if any(k not in form for k in MODELS_FORM[:3]):
        return None
    if form["DEFAULT_MODELS"] is not None and not isinstance(form["DEFAULT_MODELS"], str):
        return None
    doc = {k: form.get(k) for k in MODELS_FORM}
    db.set_config("ui.models_config", json.dumps(doc))
    return doc


def embedding(db) -> dict:
    return {"status": True, **json.loads(db.config("rag.embedding", "{}"))}


def set_embedding(db, form: dict) -> dict | None:
    if not isinstance(form.get("RAG_EMBEDDING_ENGINE"), str) or not isinstance(form.get("RAG_EMBEDDING_MODEL"), str):
        return None
    doc = json.loads(db.config("rag.embedding", "{}"))
    doc.update(RAG_EMBEDDING_ENGINE=form["RAG_EMBEDDING_ENGINE"], RAG_EMBEDDING_MODEL=form["RAG_EMBEDDING_MODEL"])
    if form["RAG_EMBEDDING_ENGINE"] == "ollama" and isinstance(form.get("ollama_config"), dict):
        doc["ollama_config"] = form["ollama_config"]
    db.set_config("rag.embedding", json.dumps(doc))
    return {"status": True, **doc}


def config(db) -> dict:
    urls = json.loads(db.config("ollama.base_urls", "null")) or _urls()
    return {"ENABLE_OLLAMA_API": json.loads(db.config("ollama.enable", "true")), "OLLAMA_BASE_URLS": urls,
            "OLLAMA_API_CONFIGS": json.loads(db.config("ollama.api_configs", "{}"))}


def update(db, form: dict) -> dict | None:
    urls = form.get("OLLAMA_BASE_URLS")
    if not isinstance(urls, list) or not isinstance(form.get("OLLAMA_API_CONFIGS"), dict):
        return None
    configs = {k: v for k, v in form["OLLAMA_API_CONFIGS"].items() if k in {str(i) for i in range(len(urls))}}
    db.set_config("ollama.enable", json.dumps(form.get("ENABLE_OLLAMA_API")))
    db.set_config("ollama.base_urls", json.dumps(urls))
    db.set_config("ollama.api_configs", json.dumps(configs))
    return {"ENABLE_OLLAMA_API": form.get("ENABLE_OLLAMA_API"), "OLLAMA_BASE_URLS": urls,
            "OLLAMA_API_CONFIGS": configs}


_SSL: list = []


def _ssl_context() -> ssl.SSLContext:
    """As open-webui 0.12's env.py: AIOHTTP_CLIENT_SSL_CERT_FILE, when it names a file, is the
    only CA file trusted (read once, at start); otherwise the default verification."""
    if not _SSL:
        path = os.environ.get("AIOHTTP_CLIENT_SSL_CERT_FILE", "").strip()
        _SSL.append(ssl.create_default_context(cafile=path) if path and os.path.isfile(path)
                    else ssl.create_default_context())
    return _SSL[0]


def chat(db, form: dict) -> tuple[int, dict]:
    doc = config(db)
    live = [(i, u) for i, u in enumerate(doc["OLLAMA_BASE_URLS"])
            if (doc["OLLAMA_API_CONFIGS"].get(str(i)) or {}).get("enable", True)]
    if not doc["ENABLE_OLLAMA_API"] or not live:
        return 400, {"detail": "Model not found"}
    i, url = random.choice(live)
    body = json.dumps({"model": form.get("model"), "messages": form.get("messages") or [], "stream": False})
    headers = {"Content-Type": "application/json"}
    key = (doc["OLLAMA_API_CONFIGS"].get(str(i)) or {}).get("key")
    if key:  # utils/headers.py: a connection's key goes as a bearer token (auth_type bearer, the default)
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + "/api/chat", body.encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=float(os.environ.get("AIOHTTP_CLIENT_TIMEOUT", "300")),
                                    context=_ssl_context() if url.startswith("https://") else None) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:  # a node refusing the key (401): the chat fails, as in the real one
        return 500, {"detail": f"Open WebUI: Server Connection Error ({url}: HTTP {e.code})"}
    except (OSError, ValueError) as e:
        return 500, {"detail": f"Open WebUI: Server Connection Error ({url}: {e})"}
    content = (answer.get("message") or {}).get("content", "")
    return 200, {"choices": [{"message": {"role": "assistant", "content": content}}], "backend": url}
