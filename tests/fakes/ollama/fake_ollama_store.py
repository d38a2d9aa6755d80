"""The fake Ollama's model store: manifests and blobs under OLLAMA_MODELS, laid out as the real
one (manifests/registry.ollama.ai/library/<name>/<tag>, blobs/sha256-<hex>), and model sizes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from datetime import datetime, timezone


def split_name(name):
    name = name.strip()
    base, _, tag = name.rpartition(":") if ":" in name.rpartition("/")[2] else (name, "", "latest")
    return base, tag or "latest"


def full_name(name):
    base, tag = split_name(name)
    return f"{base}:{tag}"


def fake_size(name):
    """A stable, plausible size: a tag naming the parameters ("8b", "0.5b", "135m") gives about
    0.6 bytes a parameter (a Q4_K_M file), ± 5 %; any other name 200 MB .. 2.2 GB."""
    h = int(hashlib.sha256(full_name(name).encode()).hexdigest()[:8], 16)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([bm])(?:-.*)?", split_name(name)[1].lower())
    if m:
        params = float(m.group(1)) * (1e9 if m.group(2) == "b" else 1e6)
        return int(params * 0.6 * (0.95 + (h % 1000) / 10000))
    return 200_000_000 + h % 2_000_000_000


class Store:
    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()

    def _manifest(self, name):
        base, tag = split_name(name)
        parts = base.split("/")
        if len(parts) == 1:
            parts = ["registry.ollama.ai", "library"] + parts
        elif len(parts) == 2:
            parts = ["registry.ollama.ai"] + parts
        return os.path.join(self.root, "manifests", *parts, tag)

    def get(self, name):
        try:
            with open(self._manifest(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def all(self):
        out = []
        for dirpath, _, files in os.walk(os.path.join(self.root, "manifests")):
            for fn in files:
                try:
                    with open(os.path.join(dirpath, fn)) as f:
                        out.append(json.load(f))
                except (OSError, ValueError):
                    pass
        return sorted(out, key=lambda m: m["name"])

    def put(self, name, size, digest):
        path = self._manifest(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        blobs = os.path.join(self.root, "blobs")
        os.makedirs(blobs, exist_ok=True)
        with open(os.path.join(blobs, "sha256-" + digest), "wb") as f:
            f.write(digest.encode() * 64)  # a token of the weights: tests care about the layout
        doc = {"name": full_name(name), "model": full_name(name), "size": size, "digest": digest,
               "modified_at": datetime.now(timezone.utc).isoformat(),
               "details": {"format": "gguf", "family": "llama", "parameter_size": "fake",
                           "quantization_level": "Q4_K_M"}}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
        return doc

    def delete(self, name):
        try:
            os.unlink(self._manifest(name))
            return True
        except FileNotFoundError:
            return False
