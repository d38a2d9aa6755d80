"""Checks across keys, run on the built Config of the merged files.

Each check is skipped when a key it needs was refused (``ctx.ok``), so one mistake is not reported
twice; ``ctx.report`` puts the problem at the key the user wrote (or the nearest section given).
A new check is a function ``(cfg, ctx) -> None`` added to CHECKS.
"""

from __future__ import annotations

from localaid.config.convert import Ctx, parse_listen
from localaid.config.keys import Config
from localaid.quantity import format_duration, format_size


def _check_http(cfg: Config, ctx: Ctx) -> None:
    if (cfg.ollama.install_script[:7].lower() == "http://" and not cfg.ollama.allow_http
            and ctx.ok("ollama.install_script", "ollama.allow_http")):
        ctx.report("ollama.install_script", "plain http:// is refused unless ollama.allow_http is true")


def _check_backoff(cfg: Config, ctx: Ctx) -> None:
    h, keys = cfg.health, ("health.backoff.initial", "health.backoff.max")
    if h.backoff_initial > h.backoff_max and ctx.ok(*keys):
        if keys[0] in ctx.given:
            ctx.report(keys[0], f"must not be more than health.backoff.max "
                                f"({format_duration(h.backoff_max)}), got {format_duration(h.backoff_initial)}")
        else:
            ctx.report(keys[1], f"must not be less than health.backoff.initial "
                                f"({format_duration(h.backoff_initial)}), got {format_duration(h.backoff_max)}")


def _check_disk(cfg: Config, ctx: Ctx) -> None:
    d = cfg.disk
    if d.critical_free > d.warn_free and ctx.ok("disk.warn_free", "disk.critical_free"):
        ctx.report("disk.critical_free", f"must not be more than disk.warn_free ({format_size(d.warn_free)}), "
                                         f"got {format_size(d.critical_free)}")


def _check_ports(cfg: Config, ctx: Ctx) -> None:
    binds = [("ollama.port", "ollama", cfg.ollama.host, cfg.ollama.port)]
    if cfg.ollama.enabled and cfg.ollama.expose and ctx.ok("ollama.expose"):
        binds.append(("ollama.expose", "ollama.expose", *cfg.ollama.expose_bind))
    if cfg.webui.enabled:
        binds.append(("webui.listen", "webui.listen", cfg.webui.host, cfg.webui.port))
        if cfg.webui.tls.enabled:
            binds.append(("webui.tls.backend_port", "Open WebUI behind the HTTPS proxy (webui.tls.backend_port)",
                          "127.0.0.1", cfg.webui.tls.backend_port))
    if cfg.metrics.listen:
        host, port = parse_listen(cfg.metrics.listen)
        binds.append(("metrics.listen", "metrics.listen", host, port))
    wildcard = {"0.0.0.0", "::"}
    for i, (key, name, host, port) in enumerate(binds):
        for other_key, other, other_host, other_port in binds[:i]:
            if (port == other_port and (host == other_host or {host, other_host} & wildcard)
                    and ctx.ok(key, other_key, "ollama.host")):
                where = key if key in ctx.given else other_key
                what = other if where == key else name
                ctx.report(where, f"port {port} is already used by {what}")


def _check_torch(cfg: Config, ctx: Ctx) -> None:
    """What runs models inside Open WebUI needs PyTorch, which webui.torch: false leaves out."""
    w = cfg.webui
    if not w.enabled or w.torch or not ctx.ok("webui.torch"):
        return
    for key, wants, what in (("webui.embedding.engine", w.embedding.engine == "local", "the local embedding engine"),
                             ("webui.gpu", w.gpu, "Open WebUI on the GPU")):
        if wants and ctx.ok(key):
            ctx.report(key, f"{what} needs PyTorch: set webui.torch: true as well (about 5 GB more)")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check_exposed(cfg: Config, ctx: Ctx) -> None:
    """Ollama's API has no authentication: the network reaches it through ollama.expose (TLS and
    a token); plain on a non-loopback ollama.host only when asked for, and with an allow-list."""
    o = cfg.ollama
    if not o.enabled or o.host in LOOPBACK or o.host.startswith("127.") or not ctx.ok("ollama.host"):
        return
    if o.expose and ctx.ok("ollama.expose"):
        ctx.report("ollama.host", f"with ollama.expose, Ollama itself stays on loopback (127.0.0.1): "
                                  f"its TLS proxy serves the network at {o.expose}")
    elif not o.allow_plain_lan and ctx.ok("ollama.allow_plain_lan"):
        ctx.report("ollama.host", f"Ollama's API has no authentication and no encryption: serve it to the "
                                  f"network with ollama.expose (TLS and a token, see localaid node add), not on "
                                  f"{o.host}; or set ollama.allow_plain_lan: true with ollama.allow_from")
    elif not o.allow_from and ctx.ok("ollama.allow_from"):
        ctx.report("ollama.host", f"Ollama's API has no authentication: listening on {o.host} needs "
                                  f"ollama.allow_from, the addresses that may use it (e.g. the UI host's)")


def _check_ui_host(cfg: Config, ctx: Ctx) -> None:
    if cfg.webui.enabled and not cfg.ollama.enabled and not cfg.webui.ollama_urls \
            and ctx.ok("ollama.enabled", "webui.ollama_urls"):
        ctx.report("ollama.enabled", "with no Ollama on this host, webui.ollama_urls must name the Ollama "
                                     "nodes Open WebUI uses")


def _check_tls(cfg: Config, ctx: Ctx) -> None:
    """An own certificate comes with its key; names are for the local CA's certificate only."""
    t = cfg.webui.tls
    for key, other, mine, theirs in (("webui.tls.cert_file", "webui.tls.key_file", t.cert_file, t.key_file),
                                     ("webui.tls.key_file", "webui.tls.cert_file", t.key_file, t.cert_file)):
        if mine is not None and theirs is None and ctx.ok(key, other):
            ctx.report(key, f"needs {other} as well (a certificate and its private key)")
    if t.cert_file and t.names and ctx.ok("webui.tls.names", "webui.tls.cert_file"):
        ctx.report("webui.tls.names", "names are for the local CA's certificate: with webui.tls.cert_file "
                                      "your certificate's own names count; remove one of them")


CHECKS = (_check_tls, _check_disk, _check_http, _check_backoff, _check_ports, _check_torch, _check_exposed, _check_ui_host)
