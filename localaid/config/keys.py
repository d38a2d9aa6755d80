"""Every configuration key, declared once: the frozen dataclasses of Config.

Each YAML key is one field here, ``key(default, converter, "one-line doc")``; see schema.py for
``key()`` and ``section()``, and the package docstring for how to add a key.  The shipped example
/etc/localaid/localaid.yaml (etc/localaid.yaml) must show every key with this default: a unit
test compares them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import localaid.config.convert as c
from localaid.catalog import Pick
from localaid.config.schema import key, schema_of, section
from localaid.config.values import FrozenMap, ModelSpec

DEFAULT_WEBUI_VERSION = "0.12.4"
# Application-caused Xids (the Kubernetes device plugin's skip list): not a sign of a sick GPU.
DEFAULT_IGNORE_XIDS = frozenset({13, 31, 43, 45, 68, 109})
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

# Environment variables that have their own config key; setting them in `environment` is refused.
OLLAMA_MANAGED_ENV = {
    "OLLAMA_HOST": "ollama.host and ollama.port",
    "OLLAMA_MODELS": "ollama.models_dir",
    "OLLAMA_KEEP_ALIVE": "ollama.keep_alive",
    "OLLAMA_NUM_PARALLEL": "ollama.num_parallel",
    "OLLAMA_MAX_LOADED_MODELS": "ollama.max_loaded_models",
    "OLLAMA_CONTEXT_LENGTH": "ollama.context_length",
    "OLLAMA_GPU_OVERHEAD": "ollama.gpu_overhead",
}
WEBUI_MANAGED_ENV = {
    "DATA_DIR": "webui.data_dir",
    "HOST": "webui.listen",
    "PORT": "webui.listen",
    "OLLAMA_BASE_URL": "ollama.host and ollama.port",
    "OLLAMA_BASE_URLS": "webui.ollama_urls",
    "WEBUI_ADMIN_EMAIL": "webui.admin.email",
    "WEBUI_ADMIN_NAME": "webui.admin.name",
    "WEBUI_ADMIN_PASSWORD": "webui.admin.password_file",
    "RAG_EMBEDDING_ENGINE": "webui.embedding.engine",
    "RAG_EMBEDDING_MODEL": "webui.embedding.model",
    "RAG_OLLAMA_BASE_URL": "webui.embedding.engine",
}
MANAGED_PYTHONS = re.compile(r"3\.1[12]")  # what open-webui 0.12 accepts (>=3.11,<3.13)
EMBEDDING_DEFAULTS = {"ollama": "nomic-embed-text:latest", "local": "sentence-transformers/all-MiniLM-L6-v2"}

_HTTP = ("https", "http")


def _url_host(name: str) -> str:
    name = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(name, name)   # wildcard binds: talk via loopback
    return f"[{name}]" if ":" in name else name


@dataclass(frozen=True, slots=True)
class OllamaConfig:
    enabled: bool = key(True, c.boolean, "install and supervise Ollama on this host (false: a UI host)")
    install_script: str = key(
        "https://ollama.com/install.sh", c.url(_HTTP, "an https:// URL or an absolute path", paths=True),
        "where the Ollama installer comes from: an https:// URL or an absolute path")
    install_script_sha256: str | None = key(     # lower-case hex
        None, c.string("64 hexadecimal digits (a SHA-256)", c.SHA256, normalise=str.lower),
        "SHA-256 the downloaded installer must have; null: not checked")
    allow_http: bool = key(False, c.boolean, "accept a plain http:// install_script URL")
    version: str | None = key(                   # "0.6.2" (a leading "v" is dropped); None = newest
        None, c.string('a version such as "0.6.2"', c.OLLAMA_VERSION, hint=" (leave it unset for the newest)",
                       normalise=c.strip_v),
        "the Ollama release to install; null: the newest at installation time")
    install_timeout: float = key(900.0, c.duration(10, 6 * HOUR), "how long the installer may run")
    host: str = key("127.0.0.1", c.host, "address Ollama's API listens on")   # no brackets, even for IPv6
    port: int = key(11434, c.integer(1, 65535), "port Ollama's API listens on")
    allow_from: tuple[str, ...] = key(
        (), c.list_of(c.cidr, "IP addresses or networks"),
        "who else may reach Ollama's API (IPAddressAllow=; loopback always may)")
    expose: str | None = key(None, c.listen_string("0.0.0.0:11443"),   # normalised "host:port"
                             'serve Ollama to the network at "host:port" over TLS with a token (a GPU node, '
                             'after localaid node join); null: loopback only')
    allow_plain_lan: bool = key(False, c.boolean, "let a non-loopback ollama.host serve Ollama's API without TLS "
                                                  "and a token (a network secured otherwise); needs allow_from")
    models_dir: str | None = key(None, c.path(directory=True),
                                 "directory holding the models (OLLAMA_MODELS); null: Ollama's default")
    keep_alive: str | None = key(                # "forever" or a Go duration ("5m", "1h30m", "0s")
        None, c.keep_alive, "how long an idle model stays loaded (OLLAMA_KEEP_ALIVE); null: Ollama's default")
    num_parallel: int | None = key(None, c.integer(1, 128), "requests one model serves at a time; null: Ollama decides")
    max_loaded_models: int | None = key(None, c.integer(1, 64), "models kept loaded together; null: Ollama decides")
    context_length: int | None = key(None, c.integer(256, 2**24), "default context window in tokens")
    gpu_overhead: int | None = key(None, c.size(0, 2**40), "GPU memory Ollama leaves unused on each GPU (bytes)")
    environment: FrozenMap = key(FrozenMap(), c.environment(OLLAMA_MANAGED_ENV),
                                 "extra environment for ollama.service, NAME: value")
    models: tuple[ModelSpec, ...] = key(
        (), c.models, "models to pull and keep loaded (unless keep_warm: false); auto: one chosen for this "
                      "machine; []: none", attrs=("models", "models_auto"))
    models_auto: bool = True                     # set with models, by the key `models` ("auto")
    chosen: Pick | None = None                   # auto: the recorded pick (config.load reads it)

    @property
    def picks_model(self) -> bool:
        """localaid picks the chat model here: models is auto and Ollama is this host's (a UI
        host picks none)."""
        return self.enabled and self.models_auto

    @property
    def url(self) -> str:
        """Base URL for clients and probes ("http://127.0.0.1:11434")."""
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def expose_bind(self) -> tuple[str, int] | None:
        """ollama.expose as (host, port), the host without brackets ("0.0.0.0", 11443); None: not exposed."""
        return None if self.expose is None else c.parse_listen(self.expose)

    @property
    def expose_url(self) -> str | None:
        """The node's TLS proxy, for its own probe ("https://127.0.0.1:11443")."""
        if self.expose_bind is None:
            return None
        host, port = self.expose_bind
        return f"https://{_url_host(host)}:{port}"

    @property
    def bind(self) -> str:
        """The OLLAMA_HOST value ("127.0.0.1:11434", "[::1]:11434")."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return f"{name}:{self.port}"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    email: str = key("admin@localhost", c.string('an e-mail address such as "admin@localhost"', c.EMAIL),
                     "e-mail address of the administrator account created on first start")
    name: str = key("Admin", c.string("a name"), "display name of that account")
    password_file: str = key("/etc/localaid/webui-admin-password", c.path(),
                             "file holding its password (root only); a random one is written if absent")


@dataclass(frozen=True, slots=True)
class ManagedPythonConfig:
    version: str = key("3.11", c.string('"3.11" or "3.12"', MANAGED_PYTHONS),
                       "the Python uv installs for Open WebUI when the system's cannot run it")
    mirror: str | None = key(
        None, c.url(_HTTP + ("file",), "an http(s):// or file:// URL"),
        "where uv downloads interpreters instead of its default site (UV_PYTHON_INSTALL_MIRROR); null: the default")
    downloads_json: str | None = key(
        None, c.url(_HTTP + ("file",), "an http(s):// or file:// URL"),
        "a list of interpreter downloads in uv's JSON format (UV_PYTHON_DOWNLOADS_JSON_URL); null: uv's own")


@dataclass(frozen=True, slots=True)
class EmbeddingConfig:
    engine: str = key("ollama", c.enum("ollama", "local"),
                      "what embeds documents for document chat: ollama or local (Open WebUI's own model)")
    model: str | None = key(None, c.string("a model name"),
                            "the embedding model; null: nomic-embed-text (ollama), all-MiniLM-L6-v2 (local)")

    @property
    def model_name(self) -> str:
        """The configured model, or the engine's default ("nomic-embed-text:latest")."""
        name = self.model or EMBEDDING_DEFAULTS[self.engine]
        if self.engine == "ollama" and ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"
        return name


@dataclass(frozen=True, slots=True)
class TLSConfig:
    enabled: bool = key(False, c.boolean, "serve Open WebUI over HTTPS on webui.listen through nginx; Open WebUI "
                                          "moves to loopback (backend_port)")
    names: tuple[str, ...] = key(
        (), c.list_of(c.host, "host names or IP addresses"),
        "names and addresses the local CA's server certificate is for; []: this host's name and addresses")
    cert_file: str | None = key(None, c.path(), "your own certificate chain (PEM) instead of the local CA's; "
                                                "needs key_file")
    key_file: str | None = key(None, c.path(), "the private key (PEM) of cert_file")
    backend_port: int = key(3080, c.integer(1, 65535), "loopback port Open WebUI listens on behind the proxy")

    @property
    def own_pair(self) -> bool:
        """The administrator's certificate and key, not the local CA's."""
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class WebUIConfig:
    enabled: bool = key(True, c.boolean, "install and supervise Open WebUI")
    version: str = key(DEFAULT_WEBUI_VERSION, c.string('a version such as "0.6.5"', c.PEP440, normalise=c.strip_v),
                       "the open-webui release installed from the package index")
    host: str = key("127.0.0.1", c.listen("127.0.0.1:3000"),    # host: no brackets
                    'address and port of the web interface, "host:port"', yaml="listen", attrs=("host", "port"))
    port: int = 3000                             # set with host, by the key `listen`
    data_dir: str = key("/var/lib/open-webui", c.path(directory=True), "Open WebUI's data (DATA_DIR)")
    python: str = key("auto", c.path('"auto" or an absolute path', keywords=("auto",)),
                      "interpreter the venv is built with; auto: python3, or a uv-managed one when it is too new")
    managed_python: ManagedPythonConfig = section(ManagedPythonConfig, "the interpreter uv installs (python: auto)")
    installer: str = key("auto", c.enum("auto", "uv", "pip"), "what installs the packages: auto, uv or pip")
    ollama_urls: tuple[str, ...] = key(
        (), c.list_of(c.url(_HTTP, "an http(s):// URL"), "URLs"),
        "the Ollama nodes Open WebUI uses, watched and failed over by localaid; []: the local Ollama")
    index_url: str | None = key(None, c.url(_HTTP, "an http(s):// URL"), "package index to use; null: PyPI")
    extra_index_urls: tuple[str, ...] = key(
        (), c.list_of(c.url(_HTTP, "an http(s):// URL"), "URLs"), "further package indexes searched as well")
    find_links: tuple[str, ...] = key(
        (), c.list_of(c.url(_HTTP, "an http(s):// URL or an absolute path", paths=True), "URLs or paths"),
        "places to look for wheel files: http(s):// URLs or absolute paths")
    no_index: bool = key(False, c.boolean, "use only find_links, never a package index")
    allow_source_builds: bool = key(False, c.boolean,
                                    "build packages that have no wheel from source (their build scripts run)")
    keep_venvs: int = key(2, c.integer(1, 10), "virtual environments kept after an upgrade, for rollback")
    keep_backups: int = key(5, c.integer(1, 100), "backups taken before upgrades and restores kept (in backup.dir), and the "
                            "upgrades' copies of webui.db")
    admin: AdminConfig = section(AdminConfig, "the administrator account created on first start")
    embedding: EmbeddingConfig = section(EmbeddingConfig, "document chat: what embeds the documents")
    torch: bool = key(False, c.boolean, "install PyTorch and the CUDA libraries (local embedding/speech models)")
    gpu: bool = key(False, c.boolean, "let Open WebUI use the GPU")
    environment: FrozenMap = key(FrozenMap(), c.environment(WEBUI_MANAGED_ENV),
                                 "extra environment for open-webui.service, NAME: value")
    install_timeout: float = key(1800.0, c.duration(1 * MINUTE, 6 * HOUR),
                                 "how long building the virtual environment may take")
    tls: TLSConfig = section(TLSConfig, "HTTPS through nginx in front of Open WebUI")

    @property
    def serve(self) -> tuple[str, int]:
        """Where Open WebUI itself listens: webui.listen, or loopback behind the HTTPS proxy."""
        return ("127.0.0.1", self.tls.backend_port) if self.tls.enabled else (self.host, self.port)

    @property
    def url(self) -> str:
        """Base URL of Open WebUI itself, for probes and the admin API ("http://127.0.0.1:3000")."""
        host, port = self.serve
        return f"http://{_url_host(host)}:{port}"

    @property
    def proxy_url(self) -> str:
        """Base URL of the HTTPS proxy, for its probe ("https://127.0.0.1:3000")."""
        return f"https://{_url_host(self.host)}:{self.port}"

    @property
    def public_url(self) -> str:
        """The address people open ("https://localhost:3000"; a wildcard or loopback listen reads
        localhost)."""
        host = "localhost" if self.host in ("127.0.0.1", "::1", "0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls.enabled else 'http'}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DevicesConfig:
    mode: str = key("ensure", c.enum("ensure", "group", "world", "off"),
                    "what localaid does about /dev/nvidia*: ensure, group, world or off")
    group: str = key("video", c.string("a group name", c.GROUP), "the group used by mode group")


@dataclass(frozen=True, slots=True)
class GpuConfig:
    devices: DevicesConfig = section(DevicesConfig, "the NVIDIA device nodes")
    watch: bool = key(True, c.boolean, "watch the GPU through NVML (memory, lost GPUs, Xid errors)")
    ignore_xids: frozenset[int] = key(DEFAULT_IGNORE_XIDS, c.list_of(c.integer(1, 999), "Xid numbers", frozenset),
                                      "Xid errors caused by applications: logged, not acted on")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval: float = key(1.0, c.duration(0.2, MINUTE), "how often the services are probed")
    timeout: float = key(0.5, c.duration(0.1, 30), "how long one probe may take before it counts as failed")
    failures: int = key(3, c.integer(1, 20), "consecutive failed probes after which a service is down")
    ollama_start_grace: float = key(30.0, c.duration(0, HOUR), "failed probes not counted after Ollama starts",
                                    yaml="start_grace.ollama")
    webui_start_grace: float = key(180.0, c.duration(0, HOUR), "failed probes not counted after Open WebUI starts",
                                   yaml="start_grace.webui")
    model_load_grace: float = key(300.0, c.duration(0, HOUR), "time a model may take to load")
    busy_start_limit: float = key(1800.0, c.duration(0, DAY), "how long a start that keeps working but has not "
                                  "opened its port yet (a migration) is waited for")
    backoff_initial: float = key(2.0, c.duration(0.1, HOUR), "wait before the second restart of a hung service",
                                 yaml="backoff.initial")
    backoff_max: float = key(300.0, c.duration(1, DAY), "longest wait between restarts (doubling from initial)",
                             yaml="backoff.max")
    restart_limit: int = key(5, c.integer(1, 100), "most restarts of one service within window",
                             yaml="restart_limit.count")
    restart_window: float = key(600.0, c.duration(10, DAY), "the window restart_limit.count counts in",
                                yaml="restart_limit.window")
    runner_watchdog: bool = key(True, c.boolean, "restart Ollama when a model runner is wedged: it stopped "
                                "working and a one-token request to its model did not end",
                                yaml="runner_watchdog.enabled")
    runner_quiet: float = key(15.0, c.duration(1, HOUR), "how long a runner that was working may stay quiet "
                              "before that one-token request is sent", yaml="runner_watchdog.quiet")
    runner_canary_timeout: float = key(30.0, c.duration(1, HOUR), "how long the one-token request may take; "
                                       "a runner that did no work meanwhile is wedged",
                                       yaml="runner_watchdog.canary_timeout")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    textfile: str | None = key("/var/lib/prometheus/node-exporter/localaid.prom", c.textfile,
                               "Prometheus textfile written for node_exporter (*.prom); false: none")
    listen: str | None = key(None, c.listen_string("127.0.0.1:9101"),   # normalised "host:port"
                             'also serve /metrics over HTTP on this "host:port"; null: no server')


@dataclass(frozen=True, slots=True)
class DiskConfig:
    warn_free: int = key(10 * 10**9, c.size(0, 10**15), "free space under which STATUS warns (models dir, data dir)")
    critical_free: int = key(2 * 10**9, c.size(0, 10**15), "free space under which STATUS says the disk is full")


BACKUP_SCHEDULES = {"hourly": HOUR, "daily": DAY, "weekly": 7 * DAY}


@dataclass(frozen=True, slots=True)
class BackupConfig:
    enabled: bool = key(True, c.boolean, "back up Open WebUI's data on a schedule (localaid-backup.timer)")
    dir: str = key("/var/lib/localaid/backups", c.path(directory=True),
                   "where backups are written (root's; may be another disk or a mounted share)")
    schedule: str = key("daily", c.enum(*BACKUP_SCHEDULES), "how often: hourly, daily or weekly")
    keep: int = key(7, c.integer(1, 1000), "scheduled backups kept (the newest good one always stays)")
    max_age: float = key(30 * DAY, c.duration(HOUR, 3650 * DAY), "scheduled backups older than this are removed")

    @property
    def interval(self) -> float:
        """The schedule in seconds: STATUS warns when the last good backup is twice as old."""
        return BACKUP_SCHEDULES[self.schedule]


@dataclass(frozen=True, slots=True)
class Config:
    ollama: OllamaConfig = section(OllamaConfig, "Ollama: installation, service environment, models")
    webui: WebUIConfig = section(WebUIConfig, "Open WebUI: installation and service")
    gpu: GpuConfig = section(GpuConfig, "the GPU: device nodes and NVML watch")
    health: HealthConfig = section(HealthConfig, "probes, restarts and their limits")
    metrics: MetricsConfig = section(MetricsConfig, "Prometheus metrics")
    backup: BackupConfig = section(BackupConfig, "backups of Open WebUI's data, and their schedule")
    disk: DiskConfig = section(DiskConfig, "free space watched where models and Open WebUI's data live")
    sources: tuple[str, ...] = ()                # files actually read, in merge order

    @property
    def ollama_nodes(self) -> tuple[str, ...]:
        """The Ollama base URLs Open WebUI uses: webui.ollama_urls, or this host's own."""
        return self.webui.ollama_urls or ((self.ollama.url,) if self.ollama.enabled else ())

    @property
    def proxy_probe(self) -> str | None:
        """What the HTTPS proxy's probe asks (Open WebUI's /health through it, or on a GPU node
        Ollama's /api/version); None: no proxy here (webui.tls off and no ollama.expose)."""
        if self.webui.enabled and self.webui.tls.enabled:
            return self.webui.proxy_url + "/health"
        if self.ollama.enabled and self.ollama.expose:
            return self.ollama.expose_url + "/api/version"
        return None

    @property
    def embeds_with_ollama(self) -> bool:
        """Open WebUI embeds documents through this host's Ollama (its model is pulled here and
        takes GPU memory beside the chat model)."""
        return self.webui.enabled and self.webui.embedding.engine == "ollama" and self.ollama.enabled

    @property
    def wanted_models(self) -> tuple[ModelSpec, ...]:
        """ollama.models, plus the embedding model Open WebUI uses (pulled and kept like the
        others, loaded on demand) unless listed there already."""
        if not self.embeds_with_ollama:
            return self.ollama.models
        name = self.webui.embedding.model_name
        if any(m.name == name for m in self.ollama.models):
            return self.ollama.models
        return (*self.ollama.models, ModelSpec(name, keep_warm=False))


SCHEMA = schema_of(Config)
