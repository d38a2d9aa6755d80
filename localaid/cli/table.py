"""The command table: every command of `localaid`, declared once.

Each entry names its place in the command tree (a path such as ("upgrade", "webui")), its
one-line help, its description for `--help`, its arguments and its handler ("module:function",
relative to localaid.cli, imported only when the command runs). The entry with the empty path
is the program itself (its description, epilog and global options); an entry without a handler
groups the entries below it, and one of those must then be named. The argparse parser
(localaid.cli.build_parser) and the bash completion (localaid.cli.completion) are both made
from this table, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from localaid import __version__, paths
from localaid.cli.validate import version

# Actions after which an option takes no value (for the completion).
FLAG_ACTIONS = frozenset({"store_true", "store_false", "store_const", "count", "help", "version"})


@dataclass(frozen=True)
class Arg:
    """One argument: flags as add_argument takes them, the rest passed through to it."""
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    complete: str | tuple[str, ...] = ""  # its value in bash: "file", "dir" or these words

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def takes_value(self) -> bool:
        return not self.positional and self.options.get("action") not in FLAG_ACTIONS


def arg(*flags: str, complete: str | tuple[str, ...] = "", **options: Any) -> Arg:
    return Arg(flags, options, complete)


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    description: str = ""               # default: the help
    args: tuple[Arg, ...] = ()
    handler: str = ""                   # "module:function" relative to localaid.cli; "" for a group
    metavar: str = ""                   # a group's placeholder for what comes below it
    epilog: str = ""

    @property
    def name(self) -> str:
        return " ".join(("localaid",) + self.path)


DESCRIPTION = """\
localaid keeps a private "local OpenAI" healthy on a Debian machine with an NVIDIA GPU:
Ollama (installed through its official install script) serving models on the GPU, Open WebUI
(installed with pip/uv into its own venv) in front of it, and a supervisor that restarts what
hangs or dies, heals lost GPUs and CPU fallbacks, and is itself guarded by systemd's watchdog.
"""

EPILOG = """\
files:
  /etc/localaid/localaid.yaml     configuration (every key optional; commented defaults inside)
  /etc/localaid/conf.d/*.yaml     drop-in configuration, merged in name order
  /run/localaid/status.json       state written by the daemon every cycle
  /var/lib/localaid/              localaid's own state (Open WebUI venvs, backups)

exit status:
  0 success/healthy, 1 failure or unhealthy, 2 usage error, 3 daemon not running,
  78 configuration invalid

examples:
  systemctl status localaid           one-line health in the STATUS line
  localaid status                     services, GPU, models and last actions
  localaid config check               validate /etc/localaid before `systemctl reload localaid`
  localaid pull deepseek-r1:8b        download a model with a progress bar
"""

_VERSION_ARG = arg("--version", dest="target_version", metavar="V", type=version,
                   help="version to install, such as 0.12.4 or 1.0.0rc1 (a leading v is dropped)")

COMMANDS: tuple[Command, ...] = (
    Command((), "", DESCRIPTION, epilog=EPILOG, metavar="COMMAND", args=(
        arg("--version", action="version", version=f"localaid {__version__}"),
        arg("--config", metavar="FILE", default=paths.CONFIG_FILE, complete="file",
            help="main configuration file (default: %(default)s)"),
        arg("--conf-d", metavar="DIR", default=paths.CONFIG_DIR, complete="dir",
            help="directory of *.yaml drop-ins merged in name order (default: %(default)s)"),
    )),
    Command(("daemon",), "run the supervisor (what localaid.service runs)",
            "Run the supervision loop in the foreground: observe units, HTTP health and the GPU every\n"
            "health.interval, repair through systemd, report to systemd (Type=notify, STATUS=,\n"
            "WATCHDOG=1) and to /run/localaid/status.json. SIGHUP reloads the configuration (a bad one\n"
            "is reported and the running one kept); SIGTERM stops the loop and leaves the supervised\n"
            "services running. Refuses to start, with exit status 78, on an invalid configuration.",
            handler=".daemon:main"),
    Command(("status",), "show the health of the stack",
            "Show the daemon's last view: one status line, each service with its state, probe latency\n"
            "and restarts in the budget window, the GPU, loaded models and the last actions. Works when\n"
            "the daemon is down (says so, exit status 3). Exit status 0 healthy, 1 unhealthy.",
            args=(arg("--json", action="store_true", help="print the raw state as JSON for scripts"),),
            handler=".status:main"),
    Command(("config",), "configuration commands", "Configuration commands.", metavar="SUBCOMMAND"),
    Command(("config", "check"), "validate a configuration file",
            "Validate the configuration (by default /etc/localaid/localaid.yaml plus\n"
            "conf.d) and print every problem as FILE:LINE: KEY: REASON. Exit status 0\n"
            "when valid; 78 (or 1 for an explicit FILE) when not. An empty or missing\n"
            "file is valid: every key has a default.",
            args=(arg("file", nargs="?", metavar="FILE", complete="file",
                      help="check only this file (conf.d is not merged)"),
                  arg("-q", "--quiet", action="store_true", help="print nothing when valid")),
            handler=".config_check:main"),
    Command(("doctor",), "check the machine and advise",
            "Run checks with advice: configuration, daemon, systemd, Ollama install and drop-in, Open\n"
            "WebUI venv, service and admin safety.\n"
            "Exit status 1 when something needs fixing, 0 otherwise (warnings included).",
            handler=".doctor:main"),
    Command(("pull",), "download a model into Ollama, with progress",
            "Pull MODEL (e.g. deepseek-r1:8b) through Ollama's API with a progress bar (size, speed,\n"
            "ETA). Talks to Ollama directly: works whether or not the localaid daemon runs.",
            args=(arg("model", metavar="MODEL"),), handler=".pull:main"),
    Command(("models",), "list models; --suggest: which fit this machine",
            "List installed models, configured ones not pulled yet and those loaded in memory, with\n"
            "size, VRAM use, whether each runs on the GPU, the CPU or partly both, and whether it fits\n"
            "the GPU's memory with room for its KV cache (else a size that does).\n"
            "With --suggest: the models ollama.models: auto picks from, each with its download size,\n"
            "the memory it needs at the configured context, the smallest card it fits and whether it\n"
            "fits this machine; the one picked (or that would be) and why.",
            args=(arg("--json", action="store_true", help="machine-readable output"),
                  arg("--suggest", action="store_true",
                      help="the models auto picks from, which fit this machine, and the pick")),
            handler=".models:main"),
    Command(("upgrade",), "upgrade Ollama or Open WebUI explicitly",
            "Upgrade a component explicitly; localaid never upgrades on its own.", metavar="COMPONENT"),
    Command(("upgrade", "ollama"), "upgrade ollama",
            "Re-run Ollama's install script for VERSION (default: the configured pin, else the latest),\n"
            "keep localaid's drop-in, restart ollama.service and check its health.",
            args=(_VERSION_ARG,), handler=".upgrade:ollama"),
    Command(("upgrade", "webui"), "upgrade webui",
            "Build the new Open WebUI venv beside the serving one, back up webui.db, switch, start and\n"
            "wait for /health and /ready; on failure switch back and restore the database.",
            args=(_VERSION_ARG,), handler=".upgrade:webui"),
    Command(("backup",), "back up Open WebUI's data now",
            "Take a backup of Open WebUI's state while it keeps serving: its database and the vector\n"
            "store through SQLite's online backup, uploads, the secret key, localaid's configuration\n"
            "and the list of Ollama models (the models themselves are re-pulled). Each backup is a\n"
            "directory in backup.dir (default /var/lib/localaid/backups) with a manifest of versions\n"
            "and file hashes, checked (integrity_check) and renamed into place only when complete;\n"
            "backups beyond backup.keep or older than backup.max_age are then removed.\n"
            "localaid-backup.timer runs this on backup.schedule. Exit status 0: a good backup;\n"
            "1: none written, or one with problems (a database failing integrity_check).",
            args=(arg("--list", action="store_true", help="list the backups instead (as restore does)"),),
            handler=".backup:backup"),
    Command(("restore",), "list backups, or restore one",
            "Without BACKUP: list the backups, newest first, with date, versions, size and problems.\n"
            "With BACKUP (its name, its number in the list, or `latest`): check it against its\n"
            "manifest, stop Open WebUI, keep the current state as a backup (before-restore), put the\n"
            "backup's data and secret key back, install the Open WebUI version it was taken with when\n"
            "the installed one is older, start and wait for health; if it does not come up, put back\n"
            "what was there. A restore that is interrupted is completed by the next `localaid\n"
            "restore` or by localaid's set-up job. localaid's configuration is not changed: the\n"
            "backup's copy is in its etc/ directory.",
            args=(arg("backup", nargs="?", metavar="BACKUP", help="name, number (1 = newest) or latest"),
                  arg("--force", action="store_true", help="restore a backup that has problems")),
            handler=".backup:restore"),
    Command(("https",), "HTTPS for Open WebUI (webui.tls): its CA and certificate",
            "HTTPS for Open WebUI (webui.tls): nginx serves it on webui.listen with a certificate of\n"
            "localaid's own CA (or webui.tls.cert_file), set up by localaid's Open WebUI job.",
            metavar="SUBCOMMAND"),
    Command(("https", "ca"), "print the local CA's certificate, to trust it",
            "Print the certificate of localaid's local CA (/etc/localaid/tls/ca.crt, PEM) on standard\n"
            "output, and its SHA-256 fingerprint on standard error. Browsers and systems that trust it\n"
            "accept the HTTPS certificate localaid issues for this host (and renews every 60 days). E.g.\n"
            "  ssh HOST localaid https ca > localaid-ca.crt\n"
            "then import localaid-ca.crt as a certificate authority (compare the fingerprint). The\n"
            "same file is served at https://HOST:PORT/localaid-ca.crt. Exit status 1 without a CA.",
            handler=".https:ca"),
    Command(("https", "renew"), "renew the certificate when due (the daily timer runs it)",
            "Issue a new server certificate from the local CA when the served one ends within 30\n"
            "days, or no longer carries the names webui.tls.names (or this host's) call for, and\n"
            "restart localaid-https.service to serve it. localaid-https-renew.timer runs it daily.",
            handler=".https:renew"),
    Command(("node",), "GPU nodes that only this UI host can use (TLS and a token)",
            "A GPU node serves Ollama to the network through nginx over TLS (ollama.expose), answering\n"
            "only requests with its token. The UI host's CA signs each node's certificate:\n"
            "  on the UI host:  localaid node add gpu-a 192.168.1.21\n"
            "  on gpu-a:        localaid node join gpu-a.localaid-node\n"
            "then list https://192.168.1.21:11443 in the UI host's webui.ollama_urls.",
            metavar="SUBCOMMAND"),
    Command(("node", "add"), "(on the UI host) a certificate and a token for a GPU node",
            "Issue a certificate for the node NAME and its ADDRESSes (IP addresses or DNS names the UI\n"
            "host uses for it) from this host's CA (made when missing), valid two years, and a new\n"
            "token. Writes NAME.localaid-node (0600, never overwritten): copy it to the node and run\n"
            "`localaid node join` there, then delete it. This host keeps the token in\n"
            "/etc/localaid/tls/nodes/NAME.json (0600) and gives it to Open WebUI and to its own\n"
            "probes. Run it again to renew the certificate or replace the token.",
            args=(arg("name", metavar="NAME", help="the node's host name, e.g. gpu-a"),
                  arg("addresses", metavar="ADDRESS", nargs="+",
                      help="its IP addresses or DNS names, as the UI host reaches it"),
                  arg("--port", type=int, default=11443, metavar="PORT",
                      help="the port ollama.expose serves on (default: %(default)s)"),
                  arg("--output", metavar="FILE", complete="file",
                      help="where to write the bundle (default: NAME.localaid-node)")),
            handler=".node:add"),
    Command(("node", "join"), "(on a GPU node) install the bundle of localaid node add",
            "Check BUNDLE (the key is the certificate's, the UI host's CA signed it), install the\n"
            "certificate, the CA and the token in /etc/localaid/tls (keys 0600), write\n"
            "/etc/localaid/conf.d/50-node.yaml (ollama.expose, webui.enabled: false) unless it\n"
            "exists, and reload localaid: nginx then serves Ollama on the network over TLS, with\n"
            "the token. Refused on a host with a CA of its own (a UI host).",
            args=(arg("bundle", metavar="BUNDLE", complete="file", help="the file localaid node add wrote"),),
            handler=".node:join"),
    Command(("provision",), "(run by localaid's units) privileged set-up steps",
            "Privileged, idempotent set-up steps. localaid's daemon starts them as\n"
            "short-lived units (localaid-*.service); run by hand only to debug.", metavar="STEP"),
    Command(("provision", "devices"), "ensure /dev/nvidia* nodes and access", handler=".provision:devices"),
    Command(("provision", "ollama"), "install/configure Ollama, pull models", handler=".provision:ollama"),
    Command(("provision", "webui"), "install/configure Open WebUI", handler=".provision:webui"),
    Command(("gpu",), "(run by localaid's units) GPU recovery",
            "GPU recovery ladder: stop ollama, reload nvidia_uvm, recreate device\n"
            "nodes, start ollama. Started by the daemon as localaid-gpu-recover.service.", metavar="SUBCOMMAND"),
    Command(("gpu", "recover"), "run the recovery ladder once", handler=".provision:gpu_recover"),
    Command(("gpu", "resumed"), "(system-sleep hook) check the GPU at once after a resume",
            args=(arg("kind", nargs="?", default="suspend", help="suspend, hibernate, hybrid-sleep, ...",
                      complete=("suspend", "hibernate", "hybrid-sleep", "suspend-then-hibernate")),),
            handler=".provision:gpu_resumed"),
    Command(("completion",), "print a shell completion script",
            "Print the completion script for SHELL on standard output. Debian's package installs it\n"
            "as /usr/share/bash-completion/completions/localaid; to try it in a shell:\n"
            "  source <(localaid completion bash)",
            args=(arg("shell", metavar="SHELL", choices=("bash",), complete=("bash",),
                      help="the shell: bash"),),
            handler=".completion:main"),
)
