"""Free space where models and Open WebUI's data live (STATUS, metrics), and Ollama's orphaned
blobs (doctor)."""

from __future__ import annotations

import json
import os

from localaid import observe
from localaid.config import Config
from localaid.policy_disk import disk_fragment, disk_level
from localaid.provision.ollama.doctor import _orphan_check, orphaned_blobs
from localaid.records import DiskObs

GB = 10**9


def test_levels_and_one_line_per_disk():
    cfg = Config()  # warn below 10 GB, full below 2 GB
    models = DiskObs("models", "/usr/share/ollama/.ollama/models", 50 * GB, 500 * GB, fs=1)
    webui = DiskObs("webui", "/var/lib/open-webui", 50 * GB, 500 * GB, fs=1)
    assert disk_fragment(cfg, (models, webui)) is None
    low = (DiskObs("models", models.path, 8_100_000_000, 500 * GB, 1), DiskObs("webui", webui.path, 8_100_000_000, 500 * GB, 1))
    assert [disk_level(cfg, d) for d in low] == ["low", "low"]
    assert disk_fragment(cfg, low) == \
        "disk low: 8.1 GB free for Ollama's models and Open WebUI's data (/usr/share/ollama/.ollama/models)"
    apart = (DiskObs("models", "/srv/models", 1_200_000_000, 500 * GB, 2), webui)
    assert disk_fragment(cfg, apart) == "disk full: 1.2 GB free for Ollama's models (/srv/models)"
    assert disk_fragment(cfg, (DiskObs("webui", "/x", None),)) is None  # unknown: nothing to say


def test_the_observer_reads_the_nearest_existing_directory(tmp_path):
    cfg = Config()
    import dataclasses
    cfg = dataclasses.replace(cfg, ollama=dataclasses.replace(cfg.ollama, models_dir=str(tmp_path / "not" / "yet")))
    (models, webui) = observe.disks_obs(cfg)
    st = os.statvfs(tmp_path)
    assert models.path == str(tmp_path / "not" / "yet") and models.fs == st.f_fsid and models.free > 0
    assert webui.what == "webui"


def manifest(root, name, digests):
    d = root / "manifests/registry.ollama.ai/library" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "latest").write_text(json.dumps({"config": {"digest": digests[0]},
                                          "layers": [{"digest": x} for x in digests[1:]]}))


def test_orphaned_blobs_are_listed_with_their_size(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for name, size in (("aa", 10), ("bb", 20), ("cc", 3_000_000), ("dd", 5)):
        (blobs / f"sha256-{name * 32}").write_bytes(b"x" * size)
    (blobs / f"sha256-{'ee' * 32}-partial-0").write_bytes(b"x")  # a download under way
    os.symlink("/etc/passwd", blobs / f"sha256-{'ff' * 32}")  # never followed, never counted
    manifest(tmp_path, "qwen3", [f"sha256:{'aa' * 32}", f"sha256:{'bb' * 32}"])
    manifest(tmp_path, "nomic-embed-text", [f"sha256:{'dd' * 32}"])
    assert orphaned_blobs(str(tmp_path)) == [(f"sha256-{'cc' * 32}", 3_000_000)]
    (check,) = _orphan_check(str(tmp_path))
    assert check.ok is None and check.message.startswith("1 blob(s), 3 MB, named by no model in")
    (blobs / f"sha256-{'cc' * 32}").unlink()
    assert _orphan_check(str(tmp_path))[0].ok is True
