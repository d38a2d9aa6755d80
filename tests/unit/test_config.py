"""localaid.config: loading, merging, every error message (with its line), units, the shipped example."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from localaid import config as C
from localaid.config import (
    Config, ConfigError, FrozenMap, ModelSpec, Problem, format_duration, format_size, load,
    parse_duration, parse_listen, parse_size,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "localaid.yaml"


# ------------------------------------------------------------------------------------ helpers

def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = textwrap.dedent(content).lstrip("\n").encode()
    path.write_bytes(content)
    return path


def _load(tmp_path: Path, main: str | bytes | None, conf_d: dict[str, str | bytes] | None = None) -> Config:
    main_path = tmp_path / "localaid.yaml"
    if main is not None:
        _write(main_path, main)
    for name, text in (conf_d or {}).items():
        _write(tmp_path / "conf.d" / name, text)
    return load(str(main_path), str(tmp_path / "conf.d"))


def _errors(tmp_path: Path, main: str | bytes | None, conf_d: dict[str, str | bytes] | None = None) -> list[str]:
    """The problems load() reports, one string each, with the temporary directory as "@"."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, main, conf_d)
    return [str(p).replace(str(tmp_path), "@") for p in info.value.errors]


def _defaults(cfg: Config) -> bool:
    return dataclasses.replace(cfg, sources=()) == Config()


# ------------------------------------------------------------------------- bad configurations
#
# (id, main file, conf.d files, expected problems).  "@" is the directory holding the files.

BAD = [
    ("yaml-syntax-indent",
     """
     health:
       interval: 1s
        timeout: 2s
     """, None,
     ["@/localaid.yaml:3: YAML syntax error: mapping values are not allowed here"]),

    ("yaml-syntax-unclosed-flow",
     """
     health:
       backoff: {initial: 2s, max: 5m
     metrics: {}
     """, None,
     ["@/localaid.yaml:3: YAML syntax error: expected ',' or '}', but got ':' "
      "(while parsing a flow mapping at line 2)"]),

    ("yaml-tab-indent", "health:\n\tinterval: 1s\n", None,
     ["@/localaid.yaml:2: YAML syntax error: found character '\\t' that cannot start any token; "
      "YAML does not allow tabs for indentation"]),

    ("yaml-two-documents", "health: {}\n---\nmetrics: {}\n", None,
     ['@/localaid.yaml:2: YAML syntax error: a second document ("---"); the file must hold one mapping']),

    ("yaml-undefined-alias", "health:\n  interval: *often\n", None,
     ["@/localaid.yaml:2: YAML syntax error: found undefined alias 'often'"]),

    ("control-character", 'webui:\n  admin:\n    name: "a\x07b"\n', None,
     ["@/localaid.yaml:3: control character #x0007 is not allowed in YAML"]),

    ("non-utf8", b"# Latin-1 file\nwebui:\n  admin:\n    name: Ren\xe9\n", None,
     ["@/localaid.yaml:4: not valid UTF-8 (byte 0xe9 in column 14); save the file as UTF-8"]),

    ("top-level-list", "- ollama\n- webui\n", None,
     ["@/localaid.yaml:1: expected a mapping at the top level, got a list"]),

    ("top-level-scalar", "# just words\nhello world\n", None,
     ['@/localaid.yaml:2: expected a mapping at the top level, got "hello world"']),

    ("duplicate-keys",
     """
     health:
       interval: 1s
       timeout: 1s
       interval: 2s
     health:
       failures: 3
     """, None,
     ["@/localaid.yaml:4: health.interval: duplicate key (first set at line 2)",
      "@/localaid.yaml:5: health: duplicate key (first set at line 1)"]),

    ("unknown-key-suggestion",
     """
     health:
       intervall: 2s
     """, None,
     ['@/localaid.yaml:2: health.intervall: unknown key (did you mean "interval"?)']),

    ("unknown-key-misplaced",
     """
     interval: 2s
     webui:
       email: me@example.org
     """, None,
     ['@/localaid.yaml:1: interval: unknown key (did you mean "health.interval"?)',
      '@/localaid.yaml:3: webui.email: unknown key (did you mean "webui.admin.email"?)']),

    ("unknown-key-no-suggestion",
     """
     gpu:
       fan_speed: 80
     """, None,
     ["@/localaid.yaml:2: gpu.fan_speed: unknown key (expected one of: devices, watch, ignore_xids)"]),

    ("list-where-mapping-belongs",
     """
     health:
       - interval: 1s
     webui:
       admin: admin@example.org
     """, None,
     ["@/localaid.yaml:1: health: expected a mapping, got a list",
      '@/localaid.yaml:4: webui.admin: expected a mapping, got "admin@example.org"']),

    ("wrong-types",
     """
     ollama:
       port: "11434"
       num_parallel: 2.5
       max_loaded_models: 0x10
       models: llama3
       environment: [A=1]
     webui:
       version: [0.6.5]
       extra_index_urls: https://mirror.example.org/simple
     """, None,
     ['@/localaid.yaml:2: ollama.port: expected an integer, got "11434" (remove the quotes)',
      "@/localaid.yaml:3: ollama.num_parallel: expected an integer, got 2.5",
      "@/localaid.yaml:4: ollama.max_loaded_models: expected a decimal integer, got 0x10",
      '@/localaid.yaml:5: ollama.models: expected auto or a list of models, got "llama3"',
      "@/localaid.yaml:6: ollama.environment: expected a mapping of variable names to values, got a list",
      '@/localaid.yaml:8: webui.version: expected a version such as "0.6.5", got a list',
      '@/localaid.yaml:9: webui.extra_index_urls: expected a list of URLs, '
      'got "https://mirror.example.org/simple"']),

    ("managed-python-and-embedding",
     """
     webui:
       python: python3.11
       managed_python:
         version: "3.13"
         mirror: ftp://mirror.example.org/python
       embedding:
         engine: openai
     """, None,
     ['@/localaid.yaml:2: webui.python: expected "auto" or an absolute path (starting with /), got "python3.11"',
      '@/localaid.yaml:4: webui.managed_python.version: expected "3.11" or "3.12", got "3.13"',
      '@/localaid.yaml:5: webui.managed_python.mirror: expected an http(s):// or file:// URL, '
      'got "ftp://mirror.example.org/python"',
      '@/localaid.yaml:7: webui.embedding.engine: expected one of ollama, local, got "openai"']),

    ("torch-needed",
     """
     webui:
       embedding:
         engine: local
       gpu: true
     """, None,
     ['@/localaid.yaml:3: webui.embedding.engine: the local embedding engine needs PyTorch: set webui.torch: '
      'true as well (about 5 GB more)',
      '@/localaid.yaml:4: webui.gpu: Open WebUI on the GPU needs PyTorch: set webui.torch: true as well '
      '(about 5 GB more)']),

    ("roles",
     """
     ollama:
       enabled: false
       host: 0.0.0.0
       allow_from: [10.0.0.300/24, 192.168.1.7]
     webui:
       ollama_urls: [gpu-a:11434]
     """, None,
     ['@/localaid.yaml:4: ollama.allow_from[0]: expected an IP address or network such as "192.168.1.0/24", '
      'got "10.0.0.300/24"',
      '@/localaid.yaml:6: webui.ollama_urls[0]: expected an http(s):// URL, got "gpu-a:11434"']),

    ("exposed-without-allow-list",
     """
     ollama:
       host: 0.0.0.0
       allow_plain_lan: true
     """, None,
     ["@/localaid.yaml:2: ollama.host: Ollama's API has no authentication: listening on 0.0.0.0 needs "
      "ollama.allow_from, the addresses that may use it (e.g. the UI host's)"]),

    ("plain-api-on-the-network",
     """
     ollama:
       host: 0.0.0.0
       allow_from: [10.0.0.5]
     """, None,
     ["@/localaid.yaml:2: ollama.host: Ollama's API has no authentication and no encryption: serve it to the "
      "network with ollama.expose (TLS and a token, see localaid node add), not on 0.0.0.0; or set "
      "ollama.allow_plain_lan: true with ollama.allow_from"]),

    ("expose-keeps-ollama-on-loopback",
     """
     ollama:
       host: 192.168.1.21
       expose: 0.0.0.0:11443
     """, None,
     ["@/localaid.yaml:2: ollama.host: with ollama.expose, Ollama itself stays on loopback (127.0.0.1): its "
      "TLS proxy serves the network at 0.0.0.0:11443"]),

    ("expose-port-taken",
     """
     ollama:
       expose: 0.0.0.0:11434
     """, None,
     ["@/localaid.yaml:2: ollama.expose: port 11434 is already used by ollama"]),

    ("ui-host-without-nodes",
     """
     ollama:
       enabled: false
     """, None,
     ["@/localaid.yaml:2: ollama.enabled: with no Ollama on this host, webui.ollama_urls must name the "
      "Ollama nodes Open WebUI uses"]),

    ("bool-strictness",
     """
     webui:
       enabled: yes
       gpu: "true"
     gpu:
       watch: 1
     ollama:
       allow_http: off
     """, None,
     ['@/localaid.yaml:2: webui.enabled: expected true or false, got "yes" '
      "(YAML 1.1 words such as yes/no/on/off are not accepted)",
      '@/localaid.yaml:3: webui.gpu: expected true or false, got "true" (remove the quotes)',
      "@/localaid.yaml:5: gpu.watch: expected true or false, got 1",
      '@/localaid.yaml:7: ollama.allow_http: expected true or false, got "off" '
      "(YAML 1.1 words such as yes/no/on/off are not accepted)"]),

    ("bad-durations",
     """
     health:
       interval: fast
       timeout: 5
       model_load_grace: -5m
       start_grace:
         ollama: 30 parsecs
         webui: [3m]
     """, None,
     ['@/localaid.yaml:2: health.interval: expected a duration such as "2s", got "fast"',
      '@/localaid.yaml:3: health.timeout: expected a duration such as "2s", got 5 (add a unit, e.g. "5s")',
      '@/localaid.yaml:4: health.model_load_grace: expected a duration such as "2s", got "-5m" '
      "(durations cannot be negative)",
      '@/localaid.yaml:6: health.start_grace.ollama: expected a duration such as "2s", got "30 parsecs" '
      '(unknown unit "parsecs"; use ms, s, m, h or d)',
      '@/localaid.yaml:7: health.start_grace.webui: expected a duration such as "2s", got a list']),

    ("bad-sizes-even-when-overridden",
     """
     ollama:
       gpu_overhead: lots
     """,
     {"10-gpu.yaml": "ollama:\n  gpu_overhead: 12G\n"},
     ['@/localaid.yaml:2: ollama.gpu_overhead: expected a size such as "512MB" or "12GiB", got "lots"',
      '@/conf.d/10-gpu.yaml:2: ollama.gpu_overhead: expected a size such as "512MB" or "12GiB", got "12G" '
      '(write "12GB" for powers of 1000 or "12GiB" for powers of 1024)']),

    ("bad-size-word", "ollama:\n  gpu_overhead: lots\n", None,
     ['@/localaid.yaml:2: ollama.gpu_overhead: expected a size such as "512MB" or "12GiB", got "lots"']),

    ("out-of-range",
     """
     ollama:
       port: 70000
       context_length: 100
     webui:
       keep_venvs: 0
     health:
       failures: 50
       interval: 100ms
       restart_limit: {count: 5, window: 2d}
     gpu:
       ignore_xids: [13, 2000, x]
     """, None,
     ["@/localaid.yaml:2: ollama.port: must be between 1 and 65535, got 70000",
      "@/localaid.yaml:3: ollama.context_length: must be between 256 and 16777216, got 100",
      "@/localaid.yaml:5: webui.keep_venvs: must be between 1 and 10, got 0",
      "@/localaid.yaml:7: health.failures: must be between 1 and 20, got 50",
      '@/localaid.yaml:8: health.interval: must be between 200 ms and 1 min, got "100ms"',
      '@/localaid.yaml:9: health.restart_limit.window: must be between 10 s and 1 d, got "2d"',
      "@/localaid.yaml:11: gpu.ignore_xids[1]: must be between 1 and 999, got 2000",
      '@/localaid.yaml:11: gpu.ignore_xids[2]: expected an integer, got "x"']),

    ("bad-urls",
     """
     ollama:
       install_script: ftp://mirror.example.org/install.sh
     webui:
       index_url: mirror.example.org/simple
       find_links: [/srv/wheels, wheels/]
     """, None,
     ['@/localaid.yaml:2: ollama.install_script: expected an https:// URL or an absolute path, '
      'got "ftp://mirror.example.org/install.sh"',
      '@/localaid.yaml:4: webui.index_url: expected an http(s):// URL, got "mirror.example.org/simple"',
      '@/localaid.yaml:5: webui.find_links[1]: expected an http(s):// URL or an absolute path, got "wheels/"']),

    ("relative-install-script", "ollama:\n  install_script: install.sh\n", None,
     ['@/localaid.yaml:2: ollama.install_script: expected an https:// URL or an absolute path, got "install.sh"']),

    ("http-without-allow-http",
     """
     ollama:
       install_script: http://mirror.lan/install.sh
     """, None,
     ["@/localaid.yaml:2: ollama.install_script: plain http:// is refused unless ollama.allow_http is true"]),

    ("bad-enums",
     """
     gpu:
       devices:
         mode: always
     webui:
       installer: pipx
     """, None,
     ['@/localaid.yaml:3: gpu.devices.mode: expected one of ensure, group, world, off, got "always"',
      '@/localaid.yaml:5: webui.installer: expected one of auto, uv, pip, got "pipx" (did you mean "pip"?)']),

    ("bad-env",
     """
     ollama:
       environment:
         OLLAMA_DEBUG: 1
         1ST: x
         MY-VAR: x
         OLLAMA_HOST: 0.0.0.0
         NESTED: {a: b}
     webui:
       environment:
         DATA_DIR: /srv/webui
     """, None,
     ["@/localaid.yaml:4: ollama.environment.1ST: not a valid environment variable name "
      "(letters, digits and _, not starting with a digit)",
      "@/localaid.yaml:5: ollama.environment.MY-VAR: not a valid environment variable name "
      "(letters, digits and _, not starting with a digit)",
      "@/localaid.yaml:6: ollama.environment.OLLAMA_HOST: set from ollama.host and ollama.port; "
      "configure it there",
      "@/localaid.yaml:7: ollama.environment.NESTED: expected a one-line value, got a mapping",
      "@/localaid.yaml:10: webui.environment.DATA_DIR: set from webui.data_dir; configure it there"]),

    ("bad-listen", "webui:\n  listen: \":3000\"\n", None,
     ['@/localaid.yaml:2: webui.listen: expected host:port such as "127.0.0.1:3000", got ":3000" '
      '(name the address: "0.0.0.0:3000" for all interfaces, "127.0.0.1:3000" for this machine only)']),

    ("bad-listen-forms-in-all-files",
     """
     webui:
       listen: 3000
     metrics:
       listen: "::1:9101"
     """,
     {"10-a.yaml": "metrics:\n  listen: \"localhost:http\"\n",
      "20-b.yaml": "webui:\n  listen: \"my host:3000\"\n"},
     ['@/localaid.yaml:2: webui.listen: expected host:port such as "127.0.0.1:3000", got 3000',
      '@/localaid.yaml:4: metrics.listen: expected host:port such as "127.0.0.1:9101", got "::1:9101" '
      '(write IPv6 addresses in brackets, e.g. "[::1]:9101")',
      '@/conf.d/10-a.yaml:2: metrics.listen: expected host:port such as "127.0.0.1:9101", got "localhost:http" '
      "(the port must be a number from 1 to 65535)",
      '@/conf.d/20-b.yaml:2: webui.listen: expected host:port such as "127.0.0.1:3000", got "my host:3000" '
      '("my host" is not a host name or IP address)']),

    ("listen-ipv6-without-brackets", "metrics:\n  listen: \"::1:9101\"\n", None,
     ['@/localaid.yaml:2: metrics.listen: expected host:port such as "127.0.0.1:9101", got "::1:9101" '
      '(write IPv6 addresses in brackets, e.g. "[::1]:9101")']),

    ("listen-bare-port", "webui:\n  listen: 3000\n", None,
     ['@/localaid.yaml:2: webui.listen: expected host:port such as "127.0.0.1:3000", got 3000']),

    ("bad-ollama-host", "ollama:\n  host: 127.0.0.1:11434\n", None,
     ['@/localaid.yaml:2: ollama.host: expected a host name or IP address, got "127.0.0.1:11434" '
      "(put the port in ollama.port)"]),

    ("port-collision", "webui:\n  listen: \"0.0.0.0:11434\"\n", None,
     ["@/localaid.yaml:2: webui.listen: port 11434 is already used by ollama"]),

    ("backoff-initial-above-max",
     """
     health:
       backoff:
         initial: 10m
         max: 1m
     """, None,
     ["@/localaid.yaml:3: health.backoff.initial: must not be more than health.backoff.max (1 min), got 10 min"]),

    ("backoff-max-below-default-initial", "health:\n  backoff: {max: 1s}\n", None,
     ["@/localaid.yaml:2: health.backoff.max: must not be less than health.backoff.initial (2 s), got 1 s"]),

    ("bad-models",
     """
     ollama:
       models:
         - llama3
         - llama3:latest
         - "Llama 3"
         - name: qwen2.5:7b
           keep_warm: no
           keepwarm: true
         - keep_warm: false
         - [phi3]
     """, None,
     ['@/localaid.yaml:4: ollama.models[1]: "llama3:latest" is listed twice (first at line 3)',
      '@/localaid.yaml:5: ollama.models[2]: expected a model name such as "llama3.2:3b", got "Llama 3"',
      '@/localaid.yaml:7: ollama.models[3].keep_warm: expected true or false, got "no" '
      "(YAML 1.1 words such as yes/no/on/off are not accepted)",
      '@/localaid.yaml:8: ollama.models[3].keepwarm: unknown key (did you mean "keep_warm"?)',
      '@/localaid.yaml:9: ollama.models[4]: missing "name"',
      "@/localaid.yaml:10: ollama.models[5]: expected a model name, got a list"]),

    ("bad-strings",
     """
     ollama:
       version: latest
       install_script_sha256: abc123
       models_dir: /
     webui:
       data_dir: var/lib/open-webui
       admin:
         email: admin
     gpu:
       devices: {group: "video users"}
     metrics:
       textfile: /var/lib/prometheus/node-exporter/localaid.txt
     """, None,
     ['@/localaid.yaml:2: ollama.version: expected a version such as "0.6.2", got "latest" '
      "(leave it unset for the newest)",
      '@/localaid.yaml:3: ollama.install_script_sha256: expected 64 hexadecimal digits (a SHA-256), got "abc123"',
      '@/localaid.yaml:4: ollama.models_dir: refusing "/": a system directory; '
      "name a directory of its own, e.g. under /var/lib or /srv",
      '@/localaid.yaml:6: webui.data_dir: expected an absolute path (starting with /), got "var/lib/open-webui"',
      '@/localaid.yaml:8: webui.admin.email: expected an e-mail address such as "admin@localhost", got "admin"',
      '@/localaid.yaml:10: gpu.devices.group: expected a group name, got "video users"',
      '@/localaid.yaml:12: metrics.textfile: must end in ".prom" (the node exporter reads only *.prom files), '
      'got "/var/lib/prometheus/node-exporter/localaid.txt"']),

    ("keep-alive-in-both-files",
     """
     ollama:
       keep_alive: -1
     """,
     {"10-x.yaml": "ollama:\n  keep_alive: 5\n"},
     ['@/localaid.yaml:2: ollama.keep_alive: expected a duration such as "5m" or forever, got -1 '
      "(write forever to keep models loaded indefinitely)",
      '@/conf.d/10-x.yaml:2: ollama.keep_alive: expected a duration such as "5m" or forever, got 5 '
      '(add a unit, e.g. "5s")']),

    ("keep-alive-negative", "ollama:\n  keep_alive: -1\n", None,
     ['@/localaid.yaml:2: ollama.keep_alive: expected a duration such as "5m" or forever, got -1 '
      "(write forever to keep models loaded indefinitely)"]),

    ("yaml-oddities",
     """
     health:
       ? [a, b]
       : 1
     ollama:
       <<: {port: 1}
     """, None,
     ["@/localaid.yaml:2: health: keys must be plain names, not lists or mappings",
      "@/localaid.yaml:5: ollama.<<: YAML merge keys are not supported; write the keys out"]),

    ("error-in-conf-d",
     """
     health:
       interval: 2s
     """,
     {"10-site.yaml": "health:\n  timeout: 2s\n",
      "50-broken.yaml": "# tuning\nhealth:\n  failures: many\n  intervall: 1s\n"},
     ['@/conf.d/50-broken.yaml:3: health.failures: expected an integer, got "many"',
      '@/conf.d/50-broken.yaml:4: health.intervall: unknown key (did you mean "interval"?)']),

    ("all-errors-of-all-files-at-once",
     """
     health:
       interval: fast
     webui: [oops]
     """,
     {"10-a.yaml": "gpu: {watch: maybe}\n",
      "20-b.yaml": "health: {timeout: 1s\n",
      "30-c.yaml": "- not a mapping\n",
      "40-d": "ignored: not named *.yaml\n"},
     ['@/localaid.yaml:2: health.interval: expected a duration such as "2s", got "fast"',
      "@/localaid.yaml:3: webui: expected a mapping, got a list",
      '@/conf.d/10-a.yaml:1: gpu.watch: expected true or false, got "maybe"',
      "@/conf.d/20-b.yaml:2: YAML syntax error: expected ',' or '}', but got '<stream end>' "
      "(while parsing a flow mapping at line 1)",
      "@/conf.d/30-c.yaml:1: expected a mapping at the top level, got a list"]),
]


@pytest.mark.parametrize("main, conf_d, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config(tmp_path: Path, main, conf_d, expected):
    assert _errors(tmp_path, main, conf_d) == expected


def test_at_least_twenty_distinct_bad_configurations():
    assert len({c[0] for c in BAD}) == len(BAD) >= 20


def test_config_error_str_is_one_problem_per_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "health:\n  interval: fast\n  failures: 0\n")
    err = info.value
    assert all(isinstance(p, Problem) for p in err.errors)
    assert err.errors[0] == Problem(str(tmp_path / "localaid.yaml"), 2, "health.interval",
                                    'expected a duration such as "2s", got "fast"')
    assert str(err) == "\n".join(str(p) for p in err.errors)
    assert str(err).count("\n") == 1


def test_problem_format_matches_the_documented_line():
    p = Problem("/etc/localaid/localaid.yaml", 12, "health.interval", 'expected a duration such as "2s", got "fast"')
    assert str(p) == '/etc/localaid/localaid.yaml:12: health.interval: expected a duration such as "2s", got "fast"'
    assert str(Problem("/x.yaml", None, None, "is a directory")) == "/x.yaml: is a directory"
    assert str(Problem("/x.yaml", 3, None, "YAML syntax error: oops")) == "/x.yaml:3: YAML syntax error: oops"


# --------------------------------------------------------------------------- files and access

def test_directory_given_as_file(tmp_path):
    (tmp_path / "conf.d" / "10-dir.yaml").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path), str(tmp_path / "conf.d"))
    assert [str(p) for p in info.value.errors] == [
        f"{tmp_path}: is a directory, expected a YAML file",
        f"{tmp_path}/conf.d/10-dir.yaml: is a directory, expected a YAML file",
    ]


def test_conf_d_that_is_a_file(tmp_path):
    _write(tmp_path / "conf.d", "health: {}\n")
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "localaid.yaml"), str(tmp_path / "conf.d"))
    assert [str(p) for p in info.value.errors] == [f"{tmp_path}/conf.d: not a directory"]


_READ_AS_NOBODY = """
import sys
from localaid.config import ConfigError, load
try:
    load(sys.argv[1], None)
except ConfigError as e:
    print(e)
"""


def test_unreadable_file(tmp_path):
    """EACCES is real only for a user without CAP_DAC_OVERRIDE: root reads a mode-000 file anyway.
    So as root this checks both facts: root gets the defaults-plus-content, and the same file read
    by `nobody` (what `localaid config check` run without sudo meets) gives the error."""
    d = Path(tempfile.mkdtemp())
    try:
        d.chmod(0o755)
        f = _write(d / "localaid.yaml", "health:\n  interval: 2s\n")
        f.chmod(0o000)
        expected = f"{f}: cannot read: Permission denied (are you root?)"
        if os.geteuid() != 0:
            with pytest.raises(ConfigError) as info:
                load(str(f), None)
            assert [str(p) for p in info.value.errors] == [expected]
            return
        assert load(str(f), None).health.interval == 2.0          # root: mode 000 does not stop it
        try:
            r = subprocess.run([sys.executable, "-c", _READ_AS_NOBODY, str(f)], user=65534, group=65534,
                               extra_groups=[], cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                               capture_output=True, text=True, timeout=60)
        except PermissionError:
            pytest.skip("cannot switch to user nobody here")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [expected]
    finally:
        shutil.rmtree(d)


def test_missing_main_file_gives_defaults_unless_required(tmp_path):
    cfg = load(str(tmp_path / "nope.yaml"), str(tmp_path / "no-conf.d"))
    assert _defaults(cfg) and cfg.sources == ()
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "nope.yaml"), None, missing_ok=False)
    assert str(info.value) == f"{tmp_path}/nope.yaml: cannot read: no such file"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n", "\ufeff# BOM\n"])
def test_empty_file_gives_defaults(tmp_path, text):
    cfg = _load(tmp_path, text)
    assert _defaults(cfg)
    assert cfg.sources == (str(tmp_path / "localaid.yaml"),)


def test_null_sections_and_keys_mean_default(tmp_path):
    cfg = _load(tmp_path, """
        ollama:
        webui:
          admin: null
        health:
          interval: ~
          backoff:
    """)
    assert _defaults(cfg)


# --------------------------------------------------------------------------------- conf.d merge

def test_conf_d_overrides_in_name_order(tmp_path):
    cfg = _load(tmp_path, """
        ollama:
          environment: {A: "1", B: "2"}
          models: [llama3, phi3]
        health:
          interval: 2s
          backoff: {initial: 1s, max: 1m}
        """, {
        "20-later.yaml": "health:\n  interval: 5s\n",
        "10-first.yaml": "health:\n  interval: 3s\n  backoff: {max: 2m}\nollama:\n  models: [qwen2.5:7b]\n",
        "30-env.yaml": "ollama:\n  environment: {B: null, C: on}\n",
        "40-ignored.yml": "health: {interval: 9s}\n",
        ".50-hidden.yaml": "health: {interval: 9s}\n",
        "60-old.yaml.dpkg-old": "health: {interval: 9s}\n",
    })
    assert cfg.health.interval == 5.0                 # 20 after 10
    assert (cfg.health.backoff_initial, cfg.health.backoff_max) == (1.0, 120.0)   # deep merge
    assert cfg.ollama.models == (ModelSpec("qwen2.5:7b"),)                          # lists replaced
    assert cfg.ollama.environment == {"A": "1", "C": "on"}                          # null removes
    assert cfg.sources == tuple(str(p) for p in (
        tmp_path / "localaid.yaml", tmp_path / "conf.d/10-first.yaml",
        tmp_path / "conf.d/20-later.yaml", tmp_path / "conf.d/30-env.yaml"))


def test_conf_d_can_allow_http_for_the_main_file(tmp_path):
    cfg = _load(tmp_path, "ollama:\n  install_script: http://mirror.lan/install.sh\n",
                {"10-mirror.yaml": "ollama: {allow_http: true}\n"})
    assert cfg.ollama.install_script == "http://mirror.lan/install.sh"


def test_conf_d_null_resets_to_default(tmp_path):
    cfg = _load(tmp_path, "webui:\n  listen: \"0.0.0.0:8080\"\n", {"10.yaml": "webui:\n  listen: null\n"})
    assert (cfg.webui.host, cfg.webui.port) == ("127.0.0.1", 3000)


def test_conf_d_without_main_file(tmp_path):
    cfg = _load(tmp_path, None, {"10.yaml": "gpu: {watch: false}\n"})
    assert cfg.gpu.watch is False
    assert cfg.sources == (str(tmp_path / "conf.d/10.yaml"),)


# ------------------------------------------------------------------------------ good values

def test_values_are_converted(tmp_path):
    cfg = _load(tmp_path, """
        ollama:
          install_script: /opt/mirror/install.sh
          install_script_sha256: ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789
          version: v0.6.2
          host: "[::1]"
          port: 11500
          keep_alive: 1h30m
          gpu_overhead: 512MiB
          environment: {OLLAMA_DEBUG: 1, OLLAMA_FLASH_ATTENTION: true, X: yes}
          models:
            - deepseek-r1:8b
            - llama3
            - name: hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
              keep_warm: false
            - registry.example.org:5000/team/model:v1
        webui:
          version: 0.10
          listen: "[::]:8080"
          installer: uv
          index_url: http://devpi.lan/root/pypi/+simple/
          find_links: [/srv/wheels, https://wheels.example.org/]
          admin: {email: ops@example.org, name: 2024}
        gpu:
          devices: {mode: off, group: render}
          ignore_xids: []
        health:
          interval: 500ms
          timeout: 0.5 s
          start_grace: {ollama: 0, webui: 1 min 30 s}
          restart_limit: {count: 3, window: 1h}
        metrics:
          textfile: false
          listen: "[::1]:9101"
    """)
    o, w = cfg.ollama, cfg.webui
    assert o.install_script_sha256 == "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
    assert (o.version, o.host, o.port, o.url, o.bind) == ("0.6.2", "::1", 11500, "http://[::1]:11500", "[::1]:11500")
    assert o.keep_alive == "1h30m" and o.gpu_overhead == 512 * 2**20
    assert dict(o.environment) == {"OLLAMA_DEBUG": "1", "OLLAMA_FLASH_ATTENTION": "true", "X": "yes"}
    assert o.models == (ModelSpec("deepseek-r1:8b"), ModelSpec("llama3:latest"),
                        ModelSpec("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", keep_warm=False),
                        ModelSpec("registry.example.org:5000/team/model:v1"))
    assert (w.version, w.host, w.port, w.url) == ("0.10", "::", 8080, "http://[::1]:8080")
    assert w.find_links == ("/srv/wheels", "https://wheels.example.org/")
    assert (w.admin.email, w.admin.name) == ("ops@example.org", "2024")
    assert (cfg.gpu.devices.mode, cfg.gpu.devices.group, cfg.gpu.ignore_xids) == ("off", "render", frozenset())
    h = cfg.health
    assert (h.interval, h.timeout, h.ollama_start_grace, h.webui_start_grace) == (0.5, 0.5, 0.0, 90.0)
    assert (h.restart_limit, h.restart_window) == (3, 3600.0)
    assert (cfg.metrics.textfile, cfg.metrics.listen) == (None, "[::1]:9101")


@pytest.mark.parametrize("text, expected", [("forever", "forever"), ("0", "0s"), ("5m", "5m"),
                                             ("90s", "1m30s"), ("1.5s", "1s500ms"), ("2d", "48h")])
def test_keep_alive_becomes_a_go_duration(tmp_path, text, expected):
    assert _load(tmp_path, f"ollama:\n  keep_alive: {text}\n").ollama.keep_alive == expected


def test_wildcard_bind_is_probed_on_loopback(tmp_path):
    cfg = _load(tmp_path, "ollama:\n  host: 0.0.0.0\n  allow_plain_lan: true\n  allow_from: [10.0.0.0/24]\n"
                          "webui:\n  listen: \"0.0.0.0:3000\"\n")
    assert (cfg.ollama.url, cfg.ollama.bind, cfg.webui.url) == (
        "http://127.0.0.1:11434", "0.0.0.0:11434", "http://127.0.0.1:3000")


def test_config_is_frozen_and_hashable(tmp_path):
    cfg = _load(tmp_path, "ollama:\n  environment: {A: b}\n  models: [x]\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.health.interval = 5                                   # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.ollama.environment["A"] = "c"                         # type: ignore[index]
    assert hash(cfg) == hash(_load(tmp_path, "ollama:\n  environment: {A: b}\n  models: [x]\n"))
    assert FrozenMap({"A": "b"}) == {"A": "b"} and hash(FrozenMap({"A": "b"})) == hash(FrozenMap([("A", "b")]))


# ------------------------------------------------------------------------- the shipped example

_KEY_LINE = re.compile(r"# (\s*)([a-z_][a-z0-9_]*:(\s|$)|- )")


def _uncommented_example() -> str:
    """The example with every commented-out key line enabled (its leading "# " dropped)."""
    return "".join(line[2:] if _KEY_LINE.match(line) else line
                   for line in EXAMPLE.read_text().splitlines(keepends=True))


def test_example_as_shipped_is_all_defaults():
    assert yaml.safe_load(EXAMPLE.read_text()) is None
    # trusted_uid=None: under `sudo tools/test` the checkout belongs to another user than root
    assert _defaults(load(str(EXAMPLE), None, trusted_uid=None))


def test_example_uncommented_gives_the_defaults(tmp_path):
    cfg = _load(tmp_path, _uncommented_example())
    assert _defaults(cfg)


def test_example_documents_every_key():
    doc = yaml.safe_load(_uncommented_example())

    def present(path: str) -> bool:
        node = doc
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True

    paths = C._all_paths()
    assert "health.backoff.max" in paths and "webui.admin.password_file" in paths
    assert [p for p in paths if not present(p)] == []


def test_example_each_section_uncommented_alone_is_valid(tmp_path):
    """A user uncommenting just one section of the example gets a valid file."""
    text = _uncommented_example()
    for section in ("ollama", "webui", "gpu", "health", "metrics"):
        block = re.search(rf"^{section}:\n(?:[ #].*\n|\n)*", text, re.M)
        assert block, section
        assert _defaults(_load(tmp_path / section, block.group(0)))


# ----------------------------------------------------------------------- durations and sizes

@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("2d", 172800.0),
    ("1.5h", 5400.0), (".5s", 0.5), ("1 min 30 s", 90.0), ("3 seconds", 3.0), ("1h0m5s", 3605.0),
    (" 2s ", 2.0), ("0", 0.0), ("0s", 0.0), (0, 0.0), (0.0, 0.0), ("1m1m", 120.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, message", [
    ("fast", 'expected a duration such as "2s", got "fast"'),
    ("5", 'expected a duration such as "2s", got "5" (add a unit, e.g. "5s")'),
    ("1.5", 'expected a duration such as "2s", got "1.5" (add a unit, e.g. "1.5s")'),
    (5, 'expected a duration such as "2s", got 5 (add a unit, e.g. "5s")'),
    (-1, 'expected a duration such as "2s", got -1 (durations cannot be negative)'),
    ("-5s", 'expected a duration such as "2s", got "-5s" (durations cannot be negative)'),
    ("", 'expected a duration such as "2s", got ""'),
    ("5 x", 'expected a duration such as "2s", got "5 x" (unknown unit "x"; use ms, s, m, h or d)'),
    ("5S", 'expected a duration such as "2s", got "5S"'),
    ("1e3s", 'expected a duration such as "2s", got "1e3s" (unknown unit "e"; use ms, s, m, h or d)'),
    ("s", 'expected a duration such as "2s", got "s"'),
    (True, 'expected a duration such as "2s", got true'),
    (None, 'expected a duration such as "2s", got None'),
])
def test_parse_duration_refuses(text, message):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize("text, size", [
    ("512MB", 512_000_000), ("5.2GB", 5_200_000_000), ("12GiB", 12 * 2**30), ("1 kB", 1000),
    ("1KB", 1000), ("1KiB", 1024), ("0.5MiB", 2**19), ("1TB", 10**12), ("1tib", 2**40),
    ("1024", 1024), ("0", 0), (4096, 4096), ("7B", 7), ("1.0005kB", 1001),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, message", [
    ("lots", 'expected a size such as "512MB" or "12GiB", got "lots"'),
    ("12G", 'expected a size such as "512MB" or "12GiB", got "12G" '
            '(write "12GB" for powers of 1000 or "12GiB" for powers of 1024)'),
    ("1.5", 'expected a size such as "512MB" or "12GiB", got "1.5" (add a unit to a fractional size)'),
    ("-1GB", 'expected a size such as "512MB" or "12GiB", got "-1GB" (sizes cannot be negative)'),
    (-5, 'expected a size such as "512MB" or "12GiB", got -5 (sizes cannot be negative)'),
    ("5 bits", 'expected a size such as "512MB" or "12GiB", got "5 bits" (unknown unit "bits"; '
               'use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)'),
    (1.5, 'expected a size such as "512MB" or "12GiB", got 1.5'),
    (False, 'expected a size such as "512MB" or "12GiB", got false'),
])
def test_parse_size_refuses(text, message):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value) == message


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (0.0005, "0.5 ms"), (0.25, "250 ms"), (0.0099, "9.9 ms"), (0.9999, "1 s"), (9.96, "10 s"), (1, "1 s"), (2.5, "2.5 s"),
    (3, "3 s"), (45, "45 s"), (59.6, "1 min"), (60, "1 min"), (90, "1 min 30 s"), (120, "2 min"),
    (3600, "1 h"), (5400, "1 h 30 min"), (86400, "1 d"), (90000, "1 d 1 h"), (-2, "-2 s"),
    (float("inf"), "forever"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.25, 2.5, 45, 90, 120, 5400, 86400, 90000])
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("n, text, binary", [
    (0, "0 B", False), (999, "999 B", False), (1000, "1 kB", False), (1_200_000_000, "1.2 GB", False),
    (5_200_000_000, "5.2 GB", False), (274_000_000, "274 MB", False), (999_999, "1 MB", False),
    (12 * 10**9, "12 GB", False), (12_878_610_432, "12 GiB", True), (1536, "1.5 KiB", True),
    (512 * 2**20, "512 MiB", True), (1023, "1023 B", True),
])
def test_format_size(n, text, binary):
    assert format_size(n, binary=binary) == text


@pytest.mark.parametrize("n", [1000, 1_200_000_000, 512 * 2**20])
def test_format_size_reads_back_closely(n):
    assert parse_size(format_size(n).replace(" ", "")) == pytest.approx(n, rel=0.05)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:3000", ("127.0.0.1", 3000)), ("[::1]:3000", ("::1", 3000)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", [":3000", "3000", "::1:3000", "[127.0.0.1]:3000", "host:0", "host:", "a b:1"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError, match=r'^expected host:port such as "127\.0\.0\.1:3000", got '):
        parse_listen(text)


# ------------------------------------------------------------------------------ robustness

def test_alias_bomb_is_stopped(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
              for i in range(1, 9)]
    assert _errors(tmp_path, "\n".join(lines) + "\n") == ["@/localaid.yaml: too many YAML nodes (alias expansion?)"]


def test_aliases_within_limits_work(tmp_path):
    cfg = _load(tmp_path, "health:\n  backoff: {initial: &d 3s, max: *d}\n")
    assert cfg.health.backoff_initial == cfg.health.backoff_max == 3.0
