"""open-webui.service as localaid configures it: user, data dir, secret key, admin password,
environment file, drop-ins; starting it and waiting until it answers as the wanted version.

The admin password is in the environment file only until the admin exists: Open WebUI reads
WEBUI_ADMIN_PASSWORD at start to create the first account, and after the first healthy start
that shows an account, the file is rewritten without it (admin-created records that; the
password stays in webui.admin.password_file, root's)."""

from __future__ import annotations

import errno
import grp
import os
import re
import secrets

from localaid import fsutil, nodekeys, paths, procfs
from localaid.fsutil import write_if_changed
from localaid.policy import BUSY_CPU, BUSY_HOLD
from localaid.provision import safefs
from localaid.provision.job import JobError
from localaid.provision.webui.installer import TELEMETRY_OFF
from localaid.provision.webui.layout import SERVICE_USER, SETUP_UNIT, UNIT, UNIT_DATA_DIR
from localaid.provision.webui.sandbox import env_quote

HEADER = "# Written by `localaid provision webui`; edits are overwritten.\n[Service]\n"


def unit_path(path: str) -> str:
    """A path for a unit file line: % doubled (specifiers), quoted when it holds blanks."""
    path = path.replace("%", "%%")
    return f'"{path}"' if re.search(r"\s", path) else path


def render_env(config, secret_key: str, admin_password: str | None, ca_bundle: str | None = None) -> str:
    """The EnvironmentFile of open-webui.service (root-only: it holds the key, and the password
    until the admin exists). `ca_bundle`: the CAs Open WebUI trusts (https:// GPU nodes)."""
    w = config.webui
    host, port = w.serve
    env: dict[str, str] = {
        "DATA_DIR": w.data_dir,
        "HOST": host,
        "PORT": str(port),
        **({"OLLAMA_BASE_URLS": ";".join(config.ollama_nodes)} if config.webui.ollama_urls
           else {"OLLAMA_BASE_URL": config.ollama.url}),
        "WEBUI_SECRET_KEY": secret_key,
        "WEBUI_ADMIN_EMAIL": w.admin.email,
        "WEBUI_ADMIN_NAME": w.admin.name,
    }
    if admin_password:
        env["WEBUI_ADMIN_PASSWORD"] = admin_password
    env.update(TELEMETRY_OFF)
    env["ENABLE_OPENAI_API"] = "false"  # its default connection is a cloud service: no calls out
    e = w.embedding
    env["RAG_EMBEDDING_MODEL"] = e.model_name
    if e.engine == "ollama":
        # Documents are embedded by Ollama (the model is pulled with the others): nothing is
        # fetched from a model hub, at start or later; override in webui.environment.
        env.update({"RAG_EMBEDDING_ENGINE": "ollama", "RAG_OLLAMA_BASE_URL": config.ollama_nodes[0],
                    "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1"})
    # engine local: Open WebUI's SentenceTransformers model, which it downloads from the hub
    # Plugin requirements are pip-installed by the service user into its own venv: no cache
    # outside its home (the data dir).
    env["PIP_CACHE_DIR"] = os.path.join(w.data_dir, ".cache", "pip")
    if ca_bundle:  # open-webui 0.12 env.py: the CA file of every outbound aiohttp session, in place of the default
        env["AIOHTTP_CLIENT_SSL_CERT_FILE"] = ca_bundle
    if w.tls.enabled:  # reached through the HTTPS proxy: cookies only over HTTPS, links to it
        env.update({"WEBUI_URL": w.public_url, "WEBUI_SESSION_COOKIE_SECURE": "true",
                    "WEBUI_AUTH_COOKIE_SECURE": "true"})
    env.update(dict(w.environment))
    lines = ["# Written by `localaid provision webui` from the localaid configuration; edits are overwritten.",
             "# Change webui.* in /etc/localaid/localaid.yaml instead (extra variables: webui.environment)."]
    lines += [f"{k}={env_quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def render_dropin(config, gpu_groups: list[str], wsl: bool = False) -> str:
    """Machine-specific settings of open-webui.service; empty when the shipped unit fits.
    wsl: under WSL2 the GPU is /dev/dxg, allowed by path."""
    w = config.webui
    out = []
    if w.data_dir != UNIT_DATA_DIR:
        # HOME too: the user's home (made by the package) is the default data dir
        home = re.sub(r'(["\\])', r"\\\1", w.data_dir.replace("%", "%%"))
        out += [f"WorkingDirectory={unit_path(w.data_dir)}", f"ReadWritePaths={unit_path(w.data_dir)}",
                f'Environment="HOME={home}"']
    if w.gpu:
        out += ["# webui.gpu: true: CUDA for local embedding/speech models",
                "PrivateDevices=no", "DevicePolicy=closed", "DeviceAllow=char-nvidia* rw"]
        if wsl:
            out.append("DeviceAllow=/dev/dxg rw")
        if gpu_groups:
            out.append("SupplementaryGroups=" + " ".join(gpu_groups))
    return HEADER + "\n".join(out) + "\n" if out else ""


def render_setup_dropin(config, writable: str | None = None) -> str:
    """localaid-webui-setup.service may write /var/lib/open-webui, not other directories
    (ProtectSystem=strict): another data dir is added to what it may write; `writable`, the
    nearest existing directory above it while it does not exist yet (the job makes it there,
    then narrows this to the data dir)."""
    d = config.webui.data_dir
    if d == UNIT_DATA_DIR and writable in (None, d):
        return ""
    return HEADER + f"# webui.data_dir is not {UNIT_DATA_DIR}\nReadWritePaths=-{unit_path(writable or d)}\n"


def _existing(root: str, path: str) -> str:
    """`path`, or the nearest directory above it that exists (under the layout's root)."""
    while path != "/" and not os.path.isdir(root + path):
        path = os.path.dirname(path)
    return path


def _kept_secret(ctx, path: str, owner: str | None, size: int) -> tuple[str, bool]:
    """The secret in `path`, or a new one written there (0600, `owner`'s): (value, new)."""
    try:
        with open(path) as f:
            value = f.read().strip()
        if value:
            return value, False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    value = secrets.token_urlsafe(size)
    fsutil.atomic_write(path, value + "\n", mode=0o600)
    ctx.host.chown(path, owner)
    return value, True


def ensure_secret(ctx) -> str:
    return _kept_secret(ctx, ctx.layout.secret, SERVICE_USER, 32)[0]


def ensure_admin_password(ctx) -> str:
    path = ctx.layout.p(ctx.config.webui.admin.password_file)
    pw, new = _kept_secret(ctx, path, None, 18)
    if new:
        ctx.rep.say("generated the Open WebUI admin password", file=path, email=ctx.config.webui.admin.email)
    return pw


def gpu_groups(config) -> list[str]:
    out = []
    for name in (config.gpu.devices.group, "video", "render"):
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        if name not in out:
            out.append(name)
    return out


def _text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def ca_bundle_text(ctx) -> str:
    """What Open WebUI must trust to reach https:// GPU nodes: the system's CAs (the file replaces
    its default bundle, which web search and other outbound calls use too) and the site CA that
    signs the nodes' certificates. Empty without an https:// node or without the site CA."""
    layout = ctx.layout
    if not any(u.startswith("https://") for u in ctx.config.webui.ollama_urls):
        return ""
    site = _text(layout.p(nodekeys.SITE_CA))
    if "-----BEGIN CERTIFICATE-----" not in site:
        return ""
    system = _text(layout.p(nodekeys.SYSTEM_BUNDLE))
    return (system.rstrip("\n") + "\n" if system.strip() else "") + \
        f"# localaid: the site CA ({nodekeys.SITE_CA}), which signs the GPU nodes' certificates\n" + \
        site.rstrip("\n") + "\n"


def write_env(ctx, with_password: bool) -> bool:
    """The environment file, with the admin password while no admin exists. True if changed."""
    key, password = ensure_secret(ctx), ensure_admin_password(ctx)
    bundle = nodekeys.CA_BUNDLE if ca_bundle_text(ctx) else None
    text = render_env(ctx.config, key, password if with_password else None, bundle)
    return write_if_changed(ctx.layout.env_file, text, 0o600)


def ensure_user(ctx) -> None:
    """The service user, made by the package (postinst); useradd here only as a fallback, which
    cannot work where /etc is read-only (as in localaid-webui-setup.service): then say so."""
    try:
        ctx.host.ensure_user(SERVICE_USER, ctx.config.webui.data_dir, "Open WebUI (localaid)")
    except JobError as e:
        etc = ctx.layout.p("/etc")
        try:
            read_only = bool(os.statvfs(etc).f_flag & os.ST_RDONLY) or not os.access(etc, os.W_OK)
        except OSError:
            read_only = False
        if not read_only:
            raise
        raise JobError(f"user {SERVICE_USER} does not exist, and /etc is read-only here ({SETUP_UNIT} may "
                       f"not change it): the package creates the user when it is installed; reinstall it "
                       f"(apt install --reinstall localaid) or create it: useradd --system --user-group "
                       f"--home-dir {UNIT_DATA_DIR} --no-create-home --shell /usr/sbin/nologin {SERVICE_USER}",
                       e.tail) from None


def configure(ctx) -> bool:
    """User, data dir, secret, admin password, env file, drop-ins. True when the unit's
    configuration changed (a running service must be restarted to see it)."""
    w, layout, host = ctx.config.webui, ctx.layout, ctx.host
    ensure_user(ctx)
    setup_dropin = render_setup_dropin(ctx.config, _existing(layout.root, w.data_dir))
    if write_if_changed(layout.setup_dropin, setup_dropin, 0o644):
        host.daemon_reload()
    uid, gid = host.ids(SERVICE_USER)
    try:
        safefs.ensure_dir(ctx.data_dir(), 0o700, uid, gid)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise JobError(f"webui.data_dir {w.data_dir} is read-only for {SETUP_UNIT}; it may write there "
                           f"from its next start on (drop-in {layout.setup_dropin})") from None
        if e.errno == errno.ELOOP:
            raise JobError(f"webui.data_dir {w.data_dir} is a symbolic link: set it to the directory "
                           f"itself") from None
        raise
    if write_if_changed(layout.setup_dropin, render_setup_dropin(ctx.config), 0o644):
        host.daemon_reload()  # the data dir exists now: only it, from the next start on
    for d in (layout.base, layout.venvs, layout.backups):
        os.makedirs(d, mode=0o755, exist_ok=True)
    os.chmod(layout.backups, 0o700)
    # the CA bundle first: Open WebUI restarts when it changed (the system's CAs or the site CA)
    changed = write_if_changed(layout.p(nodekeys.CA_BUNDLE), ca_bundle_text(ctx), 0o644)
    changed = write_env(ctx, with_password=not os.path.exists(layout.admin_marker)) or changed
    if write_if_changed(layout.dropin, render_dropin(ctx.config, gpu_groups(ctx.config), procfs.on_wsl2()), 0o644):
        changed = True
        host.daemon_reload()
    return changed


# ---------------------------------------------------------------------------------- running
def base_url(config) -> str:
    """Open WebUI itself (behind the proxy when webui.tls is on)."""
    return config.webui.url


def start_timeout(config) -> float:
    return max(60.0, config.health.webui_start_grace)


def wait_healthy(ctx, version: str, timeout: float) -> str | None:
    """Wait for /health and /ready (and /api/version == version). None when healthy, else why.

    Open WebUI migrates its database before it opens its port. While it does not answer but its
    cgroup keeps using CPU, the wait goes on past `timeout`, up to health.busy_start_limit: an
    upgrade never stops (and rolls back) a migration that is making progress."""
    host, base = ctx.host, base_url(ctx.config)
    start = host.monotonic()
    deadline, limit = start + timeout, start + max(timeout, ctx.config.health.busy_start_limit)
    first = host.unit_state(UNIT).n_restarts
    last, shown, sample = "no answer yet", None, None
    while host.monotonic() < deadline:
        st = host.unit_state(UNIT)
        if st.n_restarts - first >= 2 or (st.active_state == "failed" and not st.job):
            return f"open-webui.service keeps failing ({st.active_state}, result {st.result or '-'}, " \
                   f"{st.n_restarts - first} restarts): journalctl -u open-webui"
        status, _ = host.get(base + "/health")
        if status == 200:
            ctx.timings.setdefault("to_health", round(host.monotonic() - start, 2))
            rstatus, _ = host.get(base + "/ready")
            vstatus, body = host.get(base + "/api/version")
            got = body.get("version") if isinstance(body, dict) else None
            if rstatus == 200 and vstatus == 200 and got == version:
                ctx.timings["to_ready"] = round(host.monotonic() - start, 2)
                return None
            last = f"/ready {rstatus}, version {got}"
        else:
            last = f"/health {status or 'no answer'}"
            now, cpu = host.monotonic(), host.cgroup_cpu(st.control_group)
            if status is None and cpu is not None and sample is not None and now > sample[0] \
                    and (cpu - sample[1]) / (now - sample[0]) >= BUSY_CPU:
                deadline = min(limit, max(deadline, now + BUSY_HOLD))
                last = f"working for {now - start:.0f} s, port not open yet (migrating?)"
            sample = (now, cpu) if cpu is not None else None
        if last != shown:
            ctx.rep.progress("running", f"waiting for Open WebUI {version} to answer ({last})", 0.9)
            shown = last
        host.sleep(0.5)
    return f"Open WebUI {version} not healthy after {host.monotonic() - start:.0f} s ({last})"


def enable(ctx) -> None:
    if not os.path.exists(ctx.layout.enabled_marker):
        ctx.host.enable(UNIT)
        fsutil.atomic_write(ctx.layout.enabled_marker, "localaid enabled open-webui.service\n")


def settle_admin(ctx, version: str, again: bool = True) -> None:
    """After a healthy start: once /api/config shows an account, the password leaves the
    environment file (the running service has read it; nothing restarts). Without any account
    (a database reset by hand) the password goes back in, and one restart creates the admin."""
    layout = ctx.layout
    status, body = ctx.host.get(base_url(ctx.config) + "/api/config")
    if status != 200 or not isinstance(body, dict):
        return  # cannot tell: leave things as they are
    if not body.get("onboarding"):
        if not os.path.exists(layout.admin_marker):
            fsutil.atomic_write(layout.admin_marker, f"{ctx.config.webui.admin.email}\n", mode=0o600)
        if write_env(ctx, with_password=False):
            ctx.rep.say("the Open WebUI admin exists: its password left the environment file",
                        file=layout.env_file)
        return
    if os.path.exists(layout.admin_marker):
        os.unlink(layout.admin_marker)
    if not write_env(ctx, with_password=True) or not again:
        return  # it had the password and made no account: doctor says so
    ctx.rep.warn("Open WebUI has no account (a new database?): restarting it to create the admin",
                 email=ctx.config.webui.admin.email)
    ctx.host.restart(UNIT)
    if wait_healthy(ctx, version, start_timeout(ctx.config)) is None:
        settle_admin(ctx, version, again=False)


def settle_embedding(ctx) -> None:
    """Open WebUI keeps its document-embedding settings in its database from its first start: an
    install made before localaid set them, or a changed webui.embedding, is written through its
    admin API. Never fails the job: what could not be done is a warning."""
    from localaid.adapters.webui_admin import AdminError
    e, config = ctx.config.webui.embedding, ctx.config
    engine, model = ("ollama" if e.engine == "ollama" else ""), e.model_name
    url = config.ollama_nodes[0] if e.engine == "ollama" and config.ollama_nodes else None
    key = (nodekeys.token_for(url, nodekeys.load(ctx.layout.p(paths.TLS_DIR))) if url else None) or ""
    try:
        admin = ctx.host.webui_admin(config, ctx.layout)
        have = admin.embedding()
        oc = have.get("ollama_config") or {}
        if ((have.get("RAG_EMBEDDING_ENGINE") or "", have.get("RAG_EMBEDDING_MODEL")) == (engine, model)
                and (url is None or (oc.get("url"), oc.get("key") or "") == (url, key))):
            return
        admin.set_embedding(engine, model, url, key)
        ctx.rep.say("Open WebUI's document embedding set from webui.embedding", engine=engine or "local",
                    model=model, was=f"{have.get('RAG_EMBEDDING_ENGINE') or 'local'} {have.get('RAG_EMBEDDING_MODEL')}")
    except AdminError as err:
        ctx.rep.warn("cannot check Open WebUI's document embedding settings", error=str(err))


def settle_default_model(ctx) -> None:
    """New chats start with the first of ollama.models (the model localaid picked, with auto):
    Open WebUI's DEFAULT_MODELS, written through its admin API, so that the first chat needs no
    click in its settings. A default an admin chose in Open WebUI is theirs: only an empty one,
    or the one localaid wrote last (layout.default_model_marker), is changed. Never fails the job."""
    from localaid.adapters.webui_admin import AdminError
    model = next((m.name for m in ctx.config.ollama.models), None)
    if model is None or not ctx.config.ollama_nodes:
        return
    marker = ctx.layout.default_model_marker
    try:
        with open(marker, encoding="utf-8") as f:
            ours = f.read().strip()
    except OSError:
        ours = ""
    try:
        admin = ctx.host.webui_admin(ctx.config, ctx.layout)
        have = str(admin.models_config().get("DEFAULT_MODELS") or "")
        if have not in ("", ours, model):
            if ours != model:  # said once per change of ollama.models
                ctx.rep.say("Open WebUI's default model was chosen in its settings: kept", default=have, ours=model)
                fsutil.atomic_write(marker, model + "\n", mode=0o644)
            return
        if have != model:
            admin.set_default_model(model)
            ctx.rep.say("Open WebUI's default model for new chats set from ollama.models", model=model,
                        was=have or None)
        if ours != model:
            fsutil.atomic_write(marker, model + "\n", mode=0o644)
    except AdminError as err:
        ctx.rep.warn("cannot check Open WebUI's default model", error=str(err))


def settle_stored(ctx) -> None:
    """What Open WebUI keeps in its database and localaid configures: the document embedding,
    and the default model of new chats."""
    settle_embedding(ctx)
    settle_default_model(ctx)
