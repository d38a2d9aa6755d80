"""The real open-webui package, installed, upgraded and used through localaid, in one Debian 12
container (module-scoped: the tests run in order and build on each other).

What is real: open-webui 0.12.3 (the previous release) and 0.12.4 (the pinned one) with all their
dependencies, less torch and the CUDA stack (the override localaid writes for webui.torch: false),
installed by localaid's own uv path. What is not: Ollama, which is the fake of tests/fakes/ollama
(its embeddings are deterministic hashes of the text, not meanings: see test_document_chat).

The wheels come from a wheelhouse prepared on this host and cached under
/var/cache/localaid-tests/real-webui (a rerun downloads nothing): resolved with uv for Python 3.11
on manylinux x86_64 with localaid's override, then fetched by pip, both from the indexes of this
machine's pip configuration. Inside the container the wheelhouse is bound read-only and pip's
configuration says no-index: the container has no network at all (private_network).

Runs by default. Skipped when the package index cannot be reached (and nothing is cached), and
when LOCALAID_SKIP_REAL_WEBUI=1. LOCALAID_REAL_WEBUI_CACHE=dir puts the cache elsewhere.

Cold (empty cache) this module takes about 2.5 minutes, of which about 1 minute prepares the
wheelhouse (about 680 MB); warm about 1.7 minutes.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from harness import install_fake_ollama, wait_for
from localaid.provision.webui.venv import SLIM_OVERRIDES

CACHE = Path(os.environ.get("LOCALAID_REAL_WEBUI_CACHE", "/var/cache/localaid-tests/real-webui"))
WHEELS = CACHE / "wheels"
OLD, NEW = "0.12.3", "0.12.4"
BASE = "/var/lib/localaid/webui"
STORE = "/var/lib/localaid/backups"
DATA = "/var/lib/open-webui"
GUEST_WHEELS = "/opt/real-wheelhouse"
PORT = 3000  # the container has its own loopback (private_network)
ADMIN = "boss@example.org"
SKIP_ENV = "LOCALAID_SKIP_REAL_WEBUI"
PROBE_TIMEOUT = 20
# The interpreter and machine of the container: Debian 12's python3.11, glibc 2.36.
PY_VERSION = "3.11"
GLIBC_MINOR = 36

CONFIG = f"""\
ollama:
  install_script: /nonexistent/install.sh
gpu:
  devices:
    mode: "off"
webui:
  version: "{OLD}"
  listen: 127.0.0.1:{PORT}
  find_links: [{GUEST_WHEELS}]
  install_timeout: 1h
  admin:
    email: {ADMIN}
    name: Boss
health:
  start_grace:
    webui: 5m
"""


# /health every 50 ms, each answer (or its absence) on a line: "<unix time> <1|0>"
POLLER = """\
import sys, time, urllib.request
url, out = sys.argv[1], sys.argv[2]
f = open(out, "a", buffering=1)
nxt = time.monotonic()
while True:
    t = time.time()
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            ok = r.status == 200
    except Exception:
        ok = False
    f.write(f"{t:.3f} {int(ok)}\\n")
    nxt += 0.05
    time.sleep(max(0.0, nxt - time.monotonic()))
"""

FAKES = Path(__file__).resolve().parents[1] / "fakes"


def skip(reason: str):
    print(f"\nSKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


# ------------------------------------------------------------------------- the wheelhouse
def pip_config() -> dict[str, str]:
    """This machine's pip configuration, as its pip reads it (files, then PIP_*: later wins)."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"([^=]*)\.([a-z0-9-]+)=(.*)$", line.strip())
        if m and m.group(1) in ("global", "download", ":env:"):
            v = m.group(3).strip()
            out[m.group(2)] = v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v
    return out


def uv_env() -> dict[str, str]:
    """uv reads no pip configuration: the same indexes, translated (never written down)."""
    conf = pip_config()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    if conf.get("index-url"):
        env["UV_INDEX_URL"] = conf["index-url"]
    if conf.get("extra-index-url"):
        env["UV_EXTRA_INDEX_URL"] = conf["extra-index-url"]
    if conf.get("find-links"):
        env["UV_FIND_LINKS"] = conf["find-links"]
    if conf.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        env["UV_NO_INDEX"] = "1"
    if conf.get("cert"):
        env["SSL_CERT_FILE"] = conf["cert"]
    env.update(UV_INDEX_STRATEGY="unsafe-best-match", UV_CACHE_DIR=str(CACHE / "uv-cache"), UV_NO_CONFIG="1",
               UV_HTTP_TIMEOUT="60")
    return env


def host_uv(wheelhouse: Path) -> str:
    """uv from the uv wheel of the test wheelhouse, unpacked once."""
    wheel = sorted(wheelhouse.glob("uv-*.whl"))[-1]
    target = CACHE / "uv" / wheel.stem
    binary = target / "uv"
    if not binary.exists():
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
            binary.with_suffix(".tmp").write_bytes(z.read(name))
        binary.with_suffix(".tmp").chmod(0o755)
        binary.with_suffix(".tmp").rename(binary)
    return str(binary)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pins(lock: Path) -> set[tuple[str, str]]:
    return {(norm(n), v) for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M)}


def have() -> set[tuple[str, str]]:
    return {(norm(p.name.split("-")[0]), p.name.split("-")[1]) for p in WHEELS.glob("*.whl")}


def complete(version: str) -> bool:
    lock = CACHE / f"lock-{version}.txt"
    return lock.exists() and pins(lock) <= have()


def compile_lock(uv: str, version: str, timeout: float, no_deps: bool = False) -> subprocess.CompletedProcess:
    req = CACHE / f"req-{version}.txt"
    req.write_text(f"open-webui=={version}\n")
    (CACHE / "overrides.txt").write_text(SLIM_OVERRIDES)
    out = CACHE / (f"probe-{version}.txt" if no_deps else f"lock-{version}.txt.tmp")
    argv = [uv, "pip", "compile", str(req), "--override", str(CACHE / "overrides.txt"),
            "--python-version", PY_VERSION, "--python-platform", f"x86_64-manylinux_2_{GLIBC_MINOR}",
            "--no-header", "--no-annotate", "--quiet", "-o", str(out)] + (["--no-deps"] if no_deps else [])
    try:
        return subprocess.run(argv, env=uv_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"no answer within {timeout:.0f} s")


def download(lock: Path) -> None:
    """pip (this machine's configuration as is) fetches exactly the pinned wheels, for the
    container's interpreter and platform rather than this host's."""
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 16, -1)] + \
        ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64", "any"]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(WHEELS),
            "-r", str(lock), "--python-version", PY_VERSION, "--implementation", "cp",
            "--abi", f"cp{PY_VERSION.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        argv += ["--platform", p]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        noise = re.compile(r"is ignored: it is neither a file nor a directory")
        err = "\n".join(ln for ln in r.stderr.splitlines() if not noise.search(ln))
        pytest.fail(f"pip download of {lock.name} failed ({r.returncode}):\n{err[-4000:]}")


NETWORK = re.compile(r"fail(ed)? to fetch|error sending request|dns error|connect|timed? ?out|no answer within|"
                     r"network|resolve host|certificate", re.I)


@pytest.fixture(scope="module")
def real_wheelhouse(rootfs, deb, wheelhouse) -> Path:
    """Wheels of open-webui 0.12.3 and 0.12.4 and their dependencies (no torch), and uv's wheel."""
    if os.environ.get(SKIP_ENV) == "1":
        skip(f"{SKIP_ENV}=1: the real open-webui tests were opted out")
    WHEELS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(CACHE / ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # another session may be filling the cache
        uv_wheel = sorted(wheelhouse.glob("uv-*.whl"))[-1]
        if not (WHEELS / uv_wheel.name).exists():
            shutil.copy(uv_wheel, WHEELS / (uv_wheel.name + ".tmp"))
            (WHEELS / (uv_wheel.name + ".tmp")).rename(WHEELS / uv_wheel.name)
        if all(complete(v) for v in (OLD, NEW)):
            return WHEELS
        uv = host_uv(wheelhouse)
        r = compile_lock(uv, NEW, PROBE_TIMEOUT, no_deps=True)
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            if r.returncode == 124 or NETWORK.search(r.stderr):
                skip(f"the package index cannot be reached (resolving open-webui=={NEW}: {why}); "
                     f"nothing cached in {CACHE}")
            pytest.fail(f"uv could not resolve open-webui=={NEW}:\n{r.stderr[-3000:]}")
        for v in (OLD, NEW):
            if complete(v):
                continue
            r = compile_lock(uv, v, 600)
            if r.returncode != 0:
                pytest.fail(f"uv pip compile open-webui=={v} failed:\n{r.stderr[-3000:]}")
            tmp = CACHE / f"lock-{v}.txt.tmp"
            if any(n in ("torch", "triton") or n.startswith("nvidia") for n, _ in pins(tmp)):
                pytest.fail(f"the override did not leave torch out of open-webui=={v}'s resolution")
            download(tmp)
            tmp.rename(CACHE / f"lock-{v}.txt")  # the mark of a complete set
            assert complete(v), sorted(pins(CACHE / f"lock-{v}.txt") - have())[:10]
        n = len(list(WHEELS.glob("*.whl")))
        size = subprocess.run(["du", "-sh", str(WHEELS)], capture_output=True, text=True).stdout.split()[0]
        print(f"\nreal wheelhouse prepared in {time.monotonic() - t0:.0f} s: {n} wheels, {size}", file=sys.stderr)
    return WHEELS


# --------------------------------------------------------------------------- the container
def start_fake_ollama(c) -> None:
    """The fake Ollama installed as its install script leaves it, before localaid comes
    (localaid's set-up job finds it installed, writes its drop-in and pulls the model it picks),
    holding the models Open WebUI is to use."""
    c.write("/etc/pip.conf", "[global]\nno-index = true\n")
    install_fake_ollama(c)
    for model in ("nomic-embed-text:latest", "llama3.2:latest"):
        c.run(["curl", "-sf", "-m", "30", "http://127.0.0.1:11434/api/pull", "-d",
               json.dumps({"model": model, "stream": False})])


@pytest.fixture(scope="module")
def container_options(real_wheelhouse):
    return {"config": CONFIG, "setup": start_fake_ollama, "private_network": True, "name": "real-webui",
            "binds": [(str(real_wheelhouse), GUEST_WHEELS, True), (str(FAKES / "ollama"), "/opt/fakes/ollama", True)]}


def api(c, method: str, path: str, doc: dict | None = None, token: str | None = None,
        upload: str | None = None, timeout: int = 30):
    argv = ["curl", "-s", "-m", str(timeout), "-X", method, "-w", "\n%{http_code}"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if doc is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(doc)]
    if upload:
        argv += ["-F", f"file=@{upload};type=text/plain"]
    r = c.run(argv + [f"http://127.0.0.1:{PORT}{path}"], check=False, timeout=timeout + 10)
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code or 0), json.loads(body) if body else None
    except ValueError:
        return int(code or 0), body


def serving(c, version: str) -> bool:
    code, body = api(c, "GET", "/api/version", timeout=3)
    return code == 200 and isinstance(body, dict) and body.get("version") == version \
        and api(c, "GET", "/health", timeout=3)[0] == 200


def signin(c, email: str, password: str) -> str:
    code, body = api(c, "POST", "/api/v1/auths/signin", {"email": email, "password": password})
    assert code == 200, (code, body)
    return body["token"]


def admin_token(c) -> str:
    return signin(c, ADMIN, c.read("/etc/localaid/webui-admin-password").strip())


def site_packages(c, version: str) -> str:
    return c.run(["sh", "-c", f"ls -d {BASE}/venvs/{version}/lib/python3*/site-packages"]).stdout.strip()


SECOND = {"name": "Second", "email": "second@example.org", "password": "second-user-pw-7", "role": "user"}
PASSAGE = ("The lighthouse keeper of Tarnovel Point counts exactly four hundred and seventeen steps to the "
           "lamp room, and the brass log book records that the copper kettle on the landing was last "
           "polished on the ninth of Brumaire by a keeper named Oriane Vasquez-Lindqvist, who kept bees on the "
           "roof of the oil store and sold their heather honey to the fishermen of the harbour every Thursday, "
           "always for eleven pennies a jar and never a penny more, whatever the weather or the season, as the "
           "harbour master's ledger of that year still shows.")
FILLER = [("Paragraph %d about the weather: the wind came from the west, the clouds were grey and low, and "
           "the harbour boats stayed in all day. " % i) * 4 for i in range(1, 4)]


# ---------------------------------------------------------------------------------- tests
def test_installed_through_localaid(container):
    c = container
    t0 = time.monotonic()
    c.systemctl("start", "localaid-webui-setup.service", timeout=3600)
    wait_for(lambda: serving(c, OLD), timeout=600, interval=0.5, message=f"real Open WebUI {OLD} serving")
    up = c.timings["apt_install"] + time.monotonic() - t0
    venv = f"{BASE}/venvs/{OLD}"
    marker = json.loads(c.read(f"{venv}/.localaid-complete"))
    du = c.run(["du", "-sh", venv]).stdout.split()[0]
    site = site_packages(c, OLD)
    dists = [d for d in c.run(["ls", site]).stdout.split() if d.endswith(".dist-info")]
    phases = " ".join(f"{k}={v}" for k, v in sorted(marker.get("phases", {}).items()))
    rss = c.run(["ps", "-o", "rss=", "-p", c.unit_property("open-webui.service", "MainPID")]).stdout.strip()
    print(f"\nreal open-webui {OLD}: apt install {c.timings['apt_install']:.1f} s; apt install → serving {up:.1f} s; "
          f"venv build {marker['seconds']} s with {marker['installer']} ({phases}); venv {du}, "
          f"{len(dists)} distributions (installer counted {marker['packages']}); RSS {int(rss) // 1024} MiB")
    assert marker["installer"] == "uv" and marker["version"] == OLD and marker["torch"] is False
    names = {norm(d.split("-")[0]) for d in dists}
    assert not {"torch", "triton"} & names and not any(n.startswith("nvidia") for n in names), sorted(names)
    assert not c.exists(f"{site}/torch")
    assert {"open_webui", "transformers", "chromadb"} <= names  # what stays without torch
    assert c.is_active("open-webui.service") == "active"


def test_the_picked_model_is_the_default_and_answers_the_first_chat(container):
    """ollama.models: auto (the shipped default): the model localaid picked for this machine
    (no GPU: the CPU tier) is pulled, is Open WebUI's default for new chats, and a chat sent to
    it right after the stack is healthy is answered, with no setting changed by hand."""
    c = container

    def healthy():
        r = c.run(["localaid", "status", "--json"], check=False)
        return r.returncode == 0 and json.loads(r.stdout)["state"]["healthy"]
    wait_for(healthy, timeout=180, interval=0.5,
             message=f"the stack healthy ({c.unit_property('localaid.service', 'StatusText')!r})")
    picked = json.loads(c.read("/var/lib/localaid/model-choice.json"))["model"]
    assert picked.startswith("qwen3:")
    admin = admin_token(c)
    # written by the set-up job as it ends, right after Open WebUI first answers
    conf = wait_for(lambda: (r := api(c, "GET", "/api/v1/configs/models", token=admin))[0] == 200
                    and r[1].get("DEFAULT_MODELS") == picked and r[1], timeout=60, interval=0.5,
                    message="Open WebUI's default model set to the pick")
    code, models = api(c, "GET", "/api/models", token=admin)  # Open WebUI lists what Ollama has now
    assert code == 200 and picked in [m["id"] for m in models["data"]], models
    code, res = api(c, "POST", "/api/chat/completions", {"model": conf["DEFAULT_MODELS"], "stream": False,
                    "messages": [{"role": "user", "content": "Say hello."}]}, token=admin, timeout=60)
    assert code == 200 and res["choices"][0]["message"]["content"], (code, res)
    print(f"\nfirst chat with the picked {picked}: {res['choices'][0]['message']['content'][:60]!r}")


def test_first_admin_is_safe(container):
    c = container
    code, body = api(c, "POST", "/api/v1/auths/signup",
                     {"name": "Mallory", "email": "mallory@example.org", "password": "mallory-pw-123"})
    assert code == 403, (code, body)
    code, body = api(c, "POST", "/api/v1/auths/signin",
                     {"email": ADMIN, "password": c.read("/etc/localaid/webui-admin-password").strip()})
    assert code == 200 and body["role"] == "admin", (code, body)
    assert "WEBUI_ADMIN_PASSWORD" not in c.read("/etc/localaid/open-webui.env")


def health_gaps(lines: list[str]) -> tuple[float, int, int]:
    """The longest time between two successful /health answers; samples; failed samples."""
    samples = [(float(t), ok == "1") for t, ok in (ln.split() for ln in lines if ln.strip())]
    oks = [t for t, ok in samples if ok]
    gap = max((b - a for a, b in zip(oks, oks[1:])), default=0.0)
    return gap, len(samples), sum(1 for _, ok in samples if not ok)


def test_upgrade_keeps_users_and_chats(container):
    c = container
    admin = admin_token(c)
    code, body = api(c, "POST", "/api/v1/auths/add", SECOND, token=admin)
    assert code == 200, (code, body)
    user = signin(c, SECOND["email"], SECOND["password"])
    chat = {"chat": {"title": "Before the upgrade", "models": ["llama3.2:latest"],
                     "messages": [{"id": "m1", "role": "user", "content": "Hello from 0.12.3"}],
                     "history": {"currentId": "m1", "messages": {"m1": {"id": "m1", "parentId": None,
                                 "childrenIds": [], "role": "user", "content": "Hello from 0.12.3"}}}}}
    code, body = api(c, "POST", "/api/v1/chats/new", chat, token=user)
    assert code == 200 and body["title"] == "Before the upgrade", (code, body)
    chat_id = body["id"]
    backups = set(c.run(["sh", "-c", f"ls {STORE} 2>/dev/null || true"]).stdout.split())

    c.write("/root/poll.py", POLLER)
    c.run(["rm", "-f", "/root/health.log"])
    c.run(["systemd-run", "--unit=health-poll", "--collect", "/usr/bin/python3", "/root/poll.py",
           f"http://127.0.0.1:{PORT}/health", "/root/health.log"])
    try:
        wait_for(lambda: c.exists("/root/health.log") and " 1\n" in c.read("/root/health.log"), timeout=10)
        t0 = time.monotonic()
        r = c.run(["localaid", "upgrade", "webui", "--version", NEW], check=False, timeout=3600)
        took = time.monotonic() - t0
        wait_for(lambda: serving(c, NEW), timeout=120, interval=0.2, message=f"{NEW} serving after the upgrade")
        time.sleep(0.3)
    finally:
        c.systemctl("stop", "health-poll", check=False)
    gap, n, failed = health_gaps(c.read("/root/health.log").splitlines())
    marker = json.loads(c.read(f"{BASE}/venvs/{NEW}/.localaid-complete"))
    print(f"\nlocalaid upgrade webui {OLD} → {NEW}: {took:.1f} s in all (venv build {marker['seconds']} s); "
          f"/health outage {gap:.2f} s (longest gap between answers; {failed} of {n} polls failed)")
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.run(["readlink", f"{BASE}/current"]).stdout.strip() == f"venvs/{NEW}"
    new_backups = set(c.run(["ls", STORE]).stdout.split()) - backups
    taken = [json.loads(c.read(f"{STORE}/{b}/manifest.json")) for b in new_backups if b.endswith("-before-upgrade")]
    assert [(m["webui_version"], m["integrity"].get("webui.db")) for m in taken] == [(OLD, "ok")], new_backups
    user = signin(c, SECOND["email"], SECOND["password"])
    code, chats = api(c, "GET", "/api/v1/chats/", token=user)
    assert code == 200 and chat_id in [ch["id"] for ch in chats], (code, chats)
    assert marker["torch"] is False and not c.exists(f"{site_packages(c, NEW)}/torch")


def upload_notes(c, token: str) -> str:
    """Upload the notes (the passage among three fillers) and wait for Open WebUI to embed them:
    the file's id. Paragraphs of 500-600 characters: no two fit in one chunk of the splitter
    (1000 characters)."""
    c.write("/root/notes.txt", "\n\n".join([FILLER[0], PASSAGE, FILLER[1], FILLER[2]]) + "\n")
    code, f = api(c, "POST", "/api/v1/files/", token=token, upload="/root/notes.txt")
    assert code == 200, (code, f)
    fid = f["id"]
    status = wait_for(lambda: (s := api(c, "GET", f"/api/v1/files/{fid}/process/status", token=token)[1])
                      and s.get("status") in ("completed", "failed") and s, timeout=60, interval=0.2)
    assert status["status"] == "completed", (status, api(c, "GET", f"/api/v1/files/{fid}", token=token))
    return fid


def finds_passage(c, token: str, fid: str) -> bool:
    """A retrieval query with the passage itself brings it back first (the vectors are stored)."""
    code, res = api(c, "POST", "/api/v1/retrieval/query/doc",
                    {"collection_name": f"file-{fid}", "query": PASSAGE, "k": 1}, token=token)
    assert code == 200, (code, res)
    return res["documents"][0][0] == PASSAGE


def test_document_chat(container):
    """Upload, embedding by (fake) Ollama, retrieval. The fake's embedding of a text is a hash of
    the whole text (tests/fakes/ollama/fake_ollama_api.py: embedding()): two texts are near only
    when they are the same text, so a question in other words finds nothing in particular. The
    query is therefore the passage itself, and the file has four chunks: the passage comes back
    first only if the chunks were embedded through Ollama, stored, and searched by vector."""
    c = container
    assert all(500 < len(p) < 1000 for p in [PASSAGE, *FILLER])
    admin = admin_token(c)
    code, emb = api(c, "GET", "/api/v1/retrieval/embedding", token=admin)
    assert code == 200 and emb["RAG_EMBEDDING_ENGINE"] == "ollama", emb
    assert emb["RAG_EMBEDDING_MODEL"] == "nomic-embed-text:latest", emb
    t0 = time.monotonic()
    fid = upload_notes(c, admin)
    print(f"\nupload → processing completed: {time.monotonic() - t0:.1f} s")
    assert finds_passage(c, admin, fid)
    # another chunk as the query: another answer (the ranking is by the stored vectors)
    code, res = api(c, "POST", "/api/v1/retrieval/query/doc",
                    {"collection_name": f"file-{fid}", "query": FILLER[1].strip(), "k": 1}, token=admin)
    assert code == 200 and res["documents"][0][0] == FILLER[1].strip(), res
    # a chat with the file attached: Open WebUI retrieves from it and sends the context to Ollama
    code, res = api(c, "POST", "/api/chat/completions",
                    {"model": "llama3.2:latest", "stream": False, "files": [{"type": "file", "id": fid}],
                     "messages": [{"role": "user", "content": "How many steps to the lamp room?"}]},
                    token=admin, timeout=60)
    assert code == 200, (code, res)
    assert any(fid in json.dumps(s) for s in res.get("sources") or []), res
    print(f"chat with the file: prompt tokens {res.get('usage', {}).get('prompt_tokens')}")


def test_journal_is_clean(container):
    c = container
    log = c.run(["journalctl", "-u", "open-webui", "--no-pager", "-o", "cat"]).stdout
    bad = [ln for ln in log.splitlines() if "huggingface" in ln.lower() or "Traceback" in ln]
    assert not bad, "\n".join(bad[:20])
    # what else it says (both versions): printed for the record, not judged
    seen: dict[str, int] = {}
    for ln in log.splitlines():
        if re.search(r"\b(ERROR|WARNING|CRITICAL)\b|[Ww]arning:", ln):
            key = re.sub(r"^\S+ \S+ \| ", "", ln)[:200]
            seen[key] = seen.get(key, 0) + 1
    print(f"\nopen-webui's journal: {len(log.splitlines())} lines, {sum(seen.values())} warnings/errors")
    for line, n in list(seen.items())[:15]:
        print(f"  {n}x {line}")


# Chats created one after another through the API for N seconds: {"ok": n, "failed": n} at the end.
BURST = """\
import json, sys, time, urllib.request
token, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end, ok, failed = time.time() + seconds, 0, 0
while time.time() < end:
    doc = {"chat": {"title": "burst %d" % ok, "models": [], "messages": [],
                    "history": {"currentId": None, "messages": {}}}}
    req = urllib.request.Request("http://127.0.0.1:3000/api/v1/chats/new", json.dumps(doc).encode(),
                                 {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10).read()
        ok += 1
    except Exception:
        failed += 1
open(out, "w").write(json.dumps({"ok": ok, "failed": failed}))
"""
THIRD = {"name": "Third", "email": "third@example.org", "password": "third-user-pw-9", "role": "user"}


def chat_titles(c, token: str) -> list[str]:
    code, chats = api(c, "GET", "/api/v1/chats/", token=token)  # no page: every chat
    assert code == 200, (code, chats)
    return [ch["title"] for ch in chats]


def restored(c, which: str) -> str:
    """`localaid restore WHICH`, its output; the health of what it restored is checked by the caller."""
    r = c.run(["localaid", "restore", which], check=False, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_backup_during_writes_then_restore_after_loss_and_corruption(container):
    """A user, a chat, a document; a backup while chats are being written, and one by the
    scheduled unit; the data dir destroyed → restore; the database overwritten with garbage →
    the next backup says so and keeps the good ones → restore."""
    c = container
    admin = admin_token(c)
    code, body = api(c, "POST", "/api/v1/auths/add", THIRD, token=admin)
    assert code == 200, (code, body)
    user = signin(c, THIRD["email"], THIRD["password"])
    code, body = api(c, "POST", "/api/v1/chats/new", {"chat": {"title": "Kept by the backup", "models": [],
                     "messages": [], "history": {"currentId": None, "messages": {}}}}, token=user)
    assert code == 200, (code, body)
    fid = upload_notes(c, admin)

    c.write("/root/burst.py", BURST)
    c.run(["systemd-run", "--unit=chat-burst", "--collect", "/usr/bin/python3", "/root/burst.py", user, "6",
           "/root/burst.json"])
    time.sleep(1)
    t0 = time.monotonic()
    r = c.run(["localaid", "backup"], check=False, timeout=600)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    burst = wait_for(lambda: c.exists("/root/burst.json") and json.loads(c.read("/root/burst.json")), timeout=30)
    name = r.stdout.strip().splitlines()[-1].split()[1].rstrip(":").rpartition("/")[2]
    manifest = json.loads(c.read(f"{STORE}/{name}/manifest.json"))
    print(f"\nlocalaid backup during a burst of chats: {took:.1f} s, {len(manifest['files'])} files; "
          f"burst {burst}")
    assert burst["failed"] == 0 and burst["ok"] > 0, burst  # writers were never refused
    assert manifest["integrity"] == {"webui.db": "ok", "vector_db/chroma.sqlite3": "ok"}, manifest["integrity"]
    assert any(f.startswith("data/uploads/") for f in manifest["files"]) and "secret-key" in manifest["files"]

    # the scheduled path: the timer is on, and its hardened unit takes a backup
    assert c.run(["systemctl", "is-enabled", "localaid-backup.timer"]).stdout.strip() == "enabled"
    c.systemctl("start", "localaid-backup.service", timeout=600)
    assert c.unit_property("localaid-backup.service", "Result") == "success"
    listing = c.run(["localaid", "restore"]).stdout
    assert listing.count("-scheduled") == 2 and "good" in listing, listing

    # a full target: refused before anything is written, the other backups untouched
    c.sh("mkdir -p /mnt/tiny && mount -t tmpfs -o size=2m tmpfs /mnt/tiny")
    c.write("/etc/localaid/conf.d/80-tiny-backups.yaml", "backup:\n  dir: /mnt/tiny\n")
    try:
        r = c.run(["localaid", "backup"], check=False, timeout=300)
        assert r.returncode == 1 and "not enough space in /mnt/tiny for a backup" in r.stdout + r.stderr, r
        assert c.run(["find", "/mnt/tiny", "-mindepth", "1"]).stdout.strip() == ""
    finally:
        c.run(["rm", "-f", "/etc/localaid/conf.d/80-tiny-backups.yaml"])
        c.run(["umount", "/mnt/tiny"], check=False)
    assert c.run(["localaid", "restore"]).stdout == listing

    # lost: the data dir emptied under the running service, which the supervisor then restarts
    c.run(["sh", "-c", f"rm -rf {DATA}/* && systemctl restart open-webui"])
    out = restored(c, "latest")
    print(out.strip().splitlines()[-1])
    user = signin(c, THIRD["email"], THIRD["password"])
    titles = chat_titles(c, user)
    assert "Kept by the backup" in titles and 0 < sum(t.startswith("burst") for t in titles) <= burst["ok"]
    admin = admin_token(c)
    assert finds_passage(c, admin, fid)

    # corrupt: garbage over most of webui.db while Open WebUI runs
    size = int(c.run(["stat", "-c", "%s", f"{DATA}/webui.db"]).stdout)
    c.run(["dd", "if=/dev/urandom", f"of={DATA}/webui.db", "bs=4096", "seek=2", f"count={max(1, size // 8192)}",
           "conv=notrunc,fsync", "status=none"])
    r = c.run(["localaid", "backup"], check=False, timeout=600)
    assert r.returncode == 1 and "integrity_check" in r.stdout + r.stderr, r.stdout + r.stderr
    wait_for(lambda: re.search(r"backup failed [^·]*webui\.db", json.loads(c.read("/run/localaid/status.json"))
                               ["status_line"]), timeout=30, message="STATUS saying the last backup failed, and why")
    out = restored(c, "latest")
    user = signin(c, THIRD["email"], THIRD["password"])
    assert "Kept by the backup" in chat_titles(c, user)
    assert finds_passage(c, admin_token(c), fid)
    print(out.strip().splitlines()[-1])


NODE2 = "http://127.0.0.1:11502"
NODE2_UNIT = """\
[Service]
ExecStart=/usr/bin/python3 /opt/fakes/ollama/ollama serve
Environment=OLLAMA_HOST=127.0.0.1:11502 OLLAMA_MODELS=/var/lib/node2/models FAKE_OLLAMA_FAULTS=/run/node2/faults.json
"""


def test_ui_host_failover_through_the_real_admin_api(container):
    """The real Open WebUI as a UI host's over two nodes: localaid writes the node list into its
    stored connections, switches a stopped node off and on again through its admin API, and chats
    keep working meanwhile."""
    c = container
    c.sh("mkdir -p /var/lib/node2/models /run/node2 && echo '{}' > /run/node2/faults.json")
    c.write("/etc/systemd/system/node2.service", NODE2_UNIT)
    c.systemctl("daemon-reload")
    c.systemctl("start", "node2.service")
    wait_for(lambda: c.run(["curl", "-sf", "-m", "2", NODE2 + "/api/version"], check=False).returncode == 0, timeout=30)
    c.run(["curl", "-sf", "-m", "30", NODE2 + "/api/pull", "-d", json.dumps({"model": "llama3.2:latest",
                                                                              "stream": False})])
    urls = ["http://127.0.0.1:11434", NODE2]
    c.write("/etc/localaid/conf.d/70-ui-host.yaml", f"ollama:\n  enabled: false\nwebui:\n  ollama_urls: [{', '.join(urls)}]\n")
    setup_ran = c.unit_property("localaid-webui-setup.service", "InactiveEnterTimestampMonotonic")
    c.systemctl("reload", "localaid")

    tok = None

    def conns():  # one GET per poll: a sign-in per poll (bcrypt) made the measured failover a second slower
        nonlocal tok
        tok = tok or admin_token(c)
        code, body = api(c, "GET", "/ollama/config", token=tok, timeout=5)
        if code != 200:
            return None
        cfgs = body.get("OLLAMA_API_CONFIGS") or {}
        return [(u, (cfgs.get(str(i)) or {}).get("enable", True)) for i, u in enumerate(body["OLLAMA_BASE_URLS"])]
    try:
        wait_for(lambda: conns() == [(urls[0], True), (urls[1], True)], timeout=180, interval=1,
                 message="the node list written into Open WebUI's stored connections")
        # the new node list restarts Open WebUI (its environment changed, the set-up job the reload
        # starts restarts it): measure from the settled stack, not while Open WebUI itself is down
        wait_for(lambda: c.unit_property("localaid-webui-setup.service", "InactiveEnterTimestampMonotonic")
                 != setup_ran and c.is_active("localaid-webui-setup.service") == "inactive"
                 and (lambda d: d["healthy"] and "nodes 2/2 ok" in d["status_line"])(
                     json.loads(c.read("/run/localaid/status.json")))
                 and conns() == [(urls[0], True), (urls[1], True)],
                 timeout=180, interval=0.5, message="the UI host settled with both nodes in use")
        c.systemctl("stop", "node2.service")
        t0 = time.monotonic()
        wait_for(lambda: conns() == [(urls[0], True), (urls[1], False)], timeout=20, interval=0.3,
                 message="node2 switched off in the real Open WebUI")
        out_after = time.monotonic() - t0
        ok = 0
        for _ in range(10):  # the real chat endpoint, through the remaining node
            code, body = api(c, "POST", "/api/chat/completions", {"model": "llama3.2:latest", "stream": False,
                             "messages": [{"role": "user", "content": "hello"}]}, token=tok, timeout=30)
            ok += code == 200
        c.systemctl("start", "node2.service")
        t1 = time.monotonic()
        wait_for(lambda: conns() == [(urls[0], True), (urls[1], True)], timeout=20, interval=0.3,
                 message="node2 switched on again")
        print(f"\nreal Open WebUI as UI host: node2 out of use {out_after:.1f} s after it stopped, back "
              f"{time.monotonic() - t1:.1f} s after it started; chats meanwhile {ok}/10 ok")
        assert out_after <= 10 and ok == 10
    finally:
        c.run(["rm", "-f", "/etc/localaid/conf.d/70-ui-host.yaml"])
        c.systemctl("reload", "localaid")


# ------------------------------------------------------------------------- HTTPS, a browser
LAN = "10.77.0.1"  # the container's own "LAN" address (a veth pair): not loopback, for the browser
SOCKET_IO = """new Promise((resolve, reject) => {
  const ws = new WebSocket(`wss://${location.host}/ws/socket.io/?EIO=4&transport=websocket`);
  const got = [];
  setTimeout(() => reject('no socket.io connect in 15 s: ' + JSON.stringify(got)), 15000);
  ws.onerror = () => reject('websocket error after ' + JSON.stringify(got));
  ws.onmessage = (e) => {
    got.push(String(e.data).slice(0, 80));
    if (String(e.data).startsWith('0{')) ws.send('40' + JSON.stringify({token: localStorage.token}));
    else if (String(e.data).startsWith('40')) { ws.close(); resolve(got); }
  };
})"""
STREAMED_CHAT = """(async () => {
  const r = await fetch('/api/chat/completions', {method: 'POST', headers: {'Content-Type': 'application/json',
    Authorization: 'Bearer ' + localStorage.token}, body: JSON.stringify({model: 'llama3.2:latest', stream: true,
    messages: [{role: 'user', content: 'Say hello in five words.'}]})});
  const reader = r.body.getReader(); let chunks = 0, text = '';
  for (;;) { const {done, value} = await reader.read(); if (done) break; chunks++; text += new TextDecoder().decode(value); }
  return {status: r.status, chunks, text: text.slice(0, 2000)};
})()"""
DISMISS_NEWS = """(() => { const b = [...document.querySelectorAll('button')].find(
  (b) => b.textContent.includes("Let's Go")); if (b) b.click(); return !!b; })()"""
SIGN_IN = """fetch('/api/v1/auths/signin', {method: 'POST', headers: {'Content-Type': 'application/json'},
  body: JSON.stringify({email: %s, password: %s})}).then(r => r.json()).then(j => { localStorage.token = j.token;
  return !!j.token; })"""


def chat_in_the_page(page, text: str) -> str:
    """A chat as a person has it: typed into Open WebUI's input, sent with Enter; the answer
    reaches the page over its socket.io connection (wss:// through the proxy). Returns its text."""
    page.eval("document.querySelector('#chat-input').focus(), true")
    page.call("Input.insertText", {"text": text})
    for kind in ("keyDown", "keyUp"):
        page.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                             "windowsVirtualKeyCode": 13, **({"text": "\r"} if kind == "keyDown" else {})})
    return page.wait_for("(() => { const e = document.querySelector('#response-content-container');"
                         " return e && e.innerText.trim().length > 2 ? e.innerText : ''; })()", timeout=90)


def test_https_in_a_browser(container, tmp_path):
    """The real Open WebUI on the network: over plain HTTP a browser has no secure context (no
    microphone); with webui.tls the page is served by nginx with the local CA's certificate,
    Chromium (trusting that CA through its own verifier) gets a secure context and
    navigator.mediaDevices, signs in, connects socket.io over wss:// through the proxy and
    streams a chat through it; plain http:// is redirected. A screenshot of the signed-in page is
    kept (browser.ARTEFACTS)."""
    from browser import ARTEFACTS, Browser, available
    if available():
        pytest.skip(available())
    c = container
    c.sh(f"ip link add lan0 type veth peer name lan1 && ip addr add {LAN}/24 dev lan0 && ip link set lan1 up "
         f"&& ip link set lan0 up")
    c.write("/etc/localaid/conf.d/80-lan.yaml", f"webui:\n  listen: 0.0.0.0:{PORT}\n")
    c.systemctl("reload", "localaid")
    wait_for(lambda: "open-webui ok" in json.loads(c.read("/run/localaid/status.json"))["status_line"]
             and c.run(["curl", "-sf", "-m", "2", f"http://{LAN}:{PORT}/health"], check=False).returncode == 0,
             timeout=180, interval=0.5, message="Open WebUI on the LAN address over plain HTTP")
    with Browser(workdir=tmp_path / "plain", netns_of=c.leader) as b:
        page = b.open(f"http://{LAN}:{PORT}/auth")
        assert page.eval("window.isSecureContext") is False
        assert page.eval("typeof navigator.mediaDevices") == "undefined"

    c.write("/etc/localaid/conf.d/80-lan.yaml", f"webui:\n  listen: 0.0.0.0:{PORT}\n  tls:\n    enabled: true\n")
    t0 = time.monotonic()
    c.systemctl("reload", "localaid")
    wait_for(lambda: (lambda d: d["healthy"] and f"https ok :{PORT}" in d["status_line"])(
        json.loads(c.read("/run/localaid/status.json"))), timeout=240, interval=0.5, message="HTTPS in STATUS")
    print(f"\nwebui.tls on: HTTPS ok in STATUS {time.monotonic() - t0:.1f} s after the reload")
    ca = tmp_path / "ca.crt"
    ca.write_text(c.read("/etc/localaid/tls/ca.crt"))
    with Browser(trust_ca=ca, workdir=tmp_path / "tls", netns_of=c.leader) as b:
        page = b.open(f"http://{LAN}:{PORT}/auth")  # plain HTTP: redirected
        assert page.url.startswith(f"https://{LAN}:{PORT}/auth"), page.url
        assert page.eval("window.isSecureContext") is True
        assert page.eval("typeof navigator.mediaDevices") == "object"
        password = c.read("/etc/localaid/webui-admin-password").strip()
        assert page.eval(SIGN_IN % (json.dumps(ADMIN), json.dumps(password))) is True
        page.navigate(f"https://{LAN}:{PORT}/")
        page.wait_for("!!document.querySelector('#chat-input')", timeout=60)
        page.eval(DISMISS_NEWS)
        time.sleep(0.5)
        got = page.eval(SOCKET_IO, timeout=20)
        chat = page.eval(STREAMED_CHAT, timeout=60)
        answer = chat_in_the_page(page, "Say hello in five words.")
        shot = page.screenshot(ARTEFACTS / "real-webui-https-signed-in.png")
    print(f"socket.io over wss through nginx: {got}; streamed chat: {chat['chunks']} chunks, HTTP {chat['status']}; "
          f"typed in the page, answered there: {answer[:60]!r}; screenshot {shot}")
    assert got[0].startswith("0{") and got[-1].startswith("40")
    assert chat["status"] == 200 and chat["chunks"] >= 2 and "data:" in chat["text"]
