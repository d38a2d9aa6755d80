"""Where Ollama's pieces live, in one place (tests give every path a temporary root).

    /usr/local/bin/ollama, /usr/local/lib/ollama/      what the install script unpacks
    /usr/local/lib/.ollama-localaid-backup/            hard-link snapshot of them, taken before it
                                                       runs (<backup>.partial while being taken)
    /usr/share/ollama                                  user ollama's home (the script's choice)
    /etc/systemd/system/ollama.service                 the script's unit, rewritten on every run
    /etc/systemd/system/ollama.service.d/50-localaid.conf   localaid's drop-in (0644)
    /etc/systemd/system/ollama.service.d/50-localaid.env    ollama.environment (0600), the drop-in's
                                                       EnvironmentFile: it may carry tokens
    /var/lib/localaid/ollama-install.json              the journal of an install under way
    /run/localaid/ollama-install.lock                  one install or upgrade at a time
    /run/localaid/maintenance/ollama                   the supervisor keeps its hands off meanwhile

The drop-in and its environment file sit together so that they go together: `apt purge
localaid` leaves Ollama serving with both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from localaid import paths

JOB = "ollama-setup"
UNIT = "ollama.service"
SERVICE_USER = "ollama"
OLLAMA_HOME = paths.OLLAMA_HOME
DEFAULT_MODELS_DIR = paths.OLLAMA_MODELS_DIR


@dataclass(frozen=True)
class Layout:
    """Every path the Ollama jobs touch; `root` prefixes them all."""
    root: str = ""

    def p(self, path: str) -> str:
        return self.root + path

    @property
    def bin(self) -> str:
        return self.p("/usr/local/bin/ollama")

    @property
    def lib(self) -> str:
        return self.p("/usr/local/lib/ollama")

    @property
    def backup(self) -> str:
        return self.p("/usr/local/lib/.ollama-localaid-backup")

    @property
    def unit_file(self) -> str:
        return self.p("/etc/systemd/system/ollama.service")

    @property
    def dropin_dir(self) -> str:
        return self.p("/etc/systemd/system/ollama.service.d")

    @property
    def dropin(self) -> str:
        return os.path.join(self.dropin_dir, "50-localaid.conf")

    @property
    def env_file(self) -> str:
        return os.path.join(self.dropin_dir, "50-localaid.env")

    @property
    def enabled_link(self) -> str:
        return self.p("/etc/systemd/system/default.target.wants/ollama.service")

    @property
    def journal(self) -> str:
        return self.p(os.path.join(paths.STATE_DIR, "ollama-install.json"))

    @property
    def lock(self) -> str:
        return self.p(os.path.join(paths.RUN_DIR, "ollama-install.lock"))

    @property
    def maintenance_dir(self) -> str:
        return self.p(paths.MAINTENANCE_DIR)

    @property
    def dev(self) -> str:
        return self.p("/dev")


LAYOUT = Layout()
