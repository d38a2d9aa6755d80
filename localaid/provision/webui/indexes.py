"""Where the build finds packages, handed to installers that read no configuration of their own.

The installers run as the service user (sandbox.py), whose home is the data dir: a pip.conf or
uv.toml there would be the web app's to write. So pip runs with PIP_CONFIG_FILE=/dev/null and
uv with UV_NO_CONFIG (or the administrator's system-wide uv.toml), and both get the machine's
pip configuration as root reads it (the system's own pip, `pip config list`: global files,
root's user files, PIP_* variables) plus localaid's webui.* keys, as environment variables of
the build unit: index URLs, which may carry credentials, never stand on a command line. uv does
not read pip's configuration: it is translated. Binary wheels only, unless
webui.allow_source_builds (the real open-webui 0.12.4 resolves to wheels only: README).
"""

from __future__ import annotations

import configparser
import os
import re

from localaid.provision.host import SAFE_PATH, Host
from localaid.provision.webui.installer import TELEMETRY_OFF

PIP_SECTIONS = ("global", "install", ":env:")  # what `pip install` reads, later wins
PIP_FILES = ("/etc/xdg/pip/pip.conf", "/etc/pip.conf", "~/.pip/pip.conf", "~/.config/pip/pip.conf")
UV_SYSTEM_CONFIG = ("/etc/xdg/uv/uv.toml", "/etc/uv/uv.toml")
PASS_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


def root_env() -> dict[str, str]:
    """Root's environment for the trusted tools it runs itself (the system's pip), without
    Python overrides."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("PATH", SAFE_PATH)
    env.setdefault("HOME", "/root")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def pip_config(host: Host, python: str, pip: list[str] | None = None) -> dict[str, str]:
    """The machine's pip configuration as root's pip reads it, by the system's own pip (`pip`:
    another way to run it, see Seed.pip); read from the files when there is no such pip."""
    r = host.run([*(pip or [python, "-m", "pip"]), "config", "list"], env=root_env(), timeout=60)
    if not r.ok:
        return pip_files(root_env())
    out: dict[str, str] = {}
    for line in r.tail:
        m = re.match(r"([^=]*)\.([a-z0-9-]+)=(.*)$", line.strip())
        if not m or m.group(1) not in PIP_SECTIONS:
            continue
        value = m.group(3).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m.group(2)] = value  # pip lists files (global, user, site) then PIP_*: later wins
    return out


def pip_files(env: dict[str, str]) -> dict[str, str]:
    """pip's configuration read as pip reads it, for a machine without a system pip."""
    out: dict[str, str] = {}
    home = env.get("HOME", "/root")
    files = [f.replace("~", home, 1) for f in PIP_FILES] + ([env["PIP_CONFIG_FILE"]] if env.get("PIP_CONFIG_FILE")
                                                            else [])
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError, OSError):
            continue
        for section in PIP_SECTIONS[:2]:
            if parser.has_section(section):
                out.update({k.replace("_", "-"): v.strip() for k, v in parser.items(section)})
    for k, v in env.items():
        if k.startswith("PIP_") and k != "PIP_CONFIG_FILE":
            out[k[4:].lower().replace("_", "-")] = v
    return out


def _split(value: str) -> list[str]:
    return [v for v in re.split(r"\s+", value.strip()) if v]


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def pip_env(config, pipconf: dict[str, str]) -> dict[str, str]:
    """PIP_* variables: the machine's configuration, then localaid's keys (an index URL replaces
    the machine's, extra indexes and wheel places add to them)."""
    w = config.webui
    env = {"PIP_" + k.upper().replace("-", "_"): v for k, v in pipconf.items()}
    if w.no_index:
        env["PIP_NO_INDEX"] = "1"
    if w.index_url:
        env["PIP_INDEX_URL"] = w.index_url
    for name, own in (("PIP_EXTRA_INDEX_URL", w.extra_index_urls), ("PIP_FIND_LINKS", w.find_links)):
        if own:
            env[name] = " ".join([*_split(env.get(name, "")), *own])
    return env


def uv_args(config, pipconf: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """pip's configuration for uv (localaid's own keys win): the options that name no index on
    the command line, the indexes and wheel places in UV_* variables."""
    w = config.webui
    args: list[str] = []
    env: dict[str, str] = {}
    if w.no_index or _true(pipconf.get("no-index")):
        args.append("--no-index")
    else:
        index = w.index_url or pipconf.get("index-url")
        if index:
            env["UV_INDEX_URL"] = index
        extra = [url for url in (w.extra_index_urls or _split(pipconf.get("extra-index-url", "")))
                 if not (url.startswith("file://") and not os.path.isdir(url[7:]))]  # pip ignores those, uv fails
        if extra:
            env["UV_EXTRA_INDEX_URL"] = " ".join(extra)
            # pip picks the best version across all indexes; uv by default only looks at the
            # first index that has a package (measured: no solution with a partial mirror first).
            args += ["--index-strategy", "unsafe-best-match"]
    links = [link for link in (w.find_links or _split(pipconf.get("find-links", "")))
             if not (link.startswith("/") and not os.path.exists(link))]
    if links:
        env["UV_FIND_LINKS"] = ",".join(links)
    for c in _split(pipconf.get("constraint", "")):
        if os.path.exists(c):
            args += ["--constraint", c]
    for h in _split(pipconf.get("trusted-host", "")):
        args += ["--allow-insecure-host", h]
    if not w.allow_source_builds:
        args.append("--no-build")
    cert = pipconf.get("cert") or os.environ.get("SSL_CERT_FILE")
    if not cert and os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        cert = "/etc/ssl/certs/ca-certificates.crt"
    if cert:
        env["SSL_CERT_FILE"] = cert  # uv trusts its bundled roots otherwise (private CAs fail)
    timeout = pipconf.get("timeout") or pipconf.get("default-timeout")
    if timeout:
        env["UV_HTTP_TIMEOUT"] = timeout
    if pipconf.get("proxy"):
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = pipconf["proxy"]
    return args, env


def pip_flags(config) -> list[str]:
    """pip's options that are no secret: wheels only unless source builds are allowed."""
    return [] if config.webui.allow_source_builds else ["--only-binary", ":all:"]


def build_env(config, pipconf: dict[str, str], uv_cache: str, pip_cache: str) -> dict[str, str]:
    """The whole environment of a build unit: no configuration file of the service user's read,
    the caches localaid keeps, the indexes for pip and uv, proxies and CAs passed on."""
    env = {k: v for k, v in os.environ.items() if k in PASS_THROUGH or k.startswith("UV_")}
    env.update(pip_env(config, pipconf))
    env.update(uv_args(config, pipconf)[1])
    uv_conf = next((f for f in UV_SYSTEM_CONFIG if os.path.isfile(f)), None)
    env.update({"PATH": SAFE_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
                "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
                "PIP_CACHE_DIR": pip_cache, "UV_CACHE_DIR": uv_cache, "UV_NO_PROGRESS": "1",
                "UV_PYTHON_DOWNLOADS": "never", **TELEMETRY_OFF})
    env.pop("UV_NO_CONFIG" if uv_conf else "UV_CONFIG_FILE", None)
    env.update({"UV_CONFIG_FILE": uv_conf} if uv_conf else {"UV_NO_CONFIG": "1"})
    return env
