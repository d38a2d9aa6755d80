"""Every path localaid reads or writes, in one place (tests point LOCALAID_ROOT elsewhere)."""

from __future__ import annotations

import os

RUN_DIR = os.environ.get("LOCALAID_RUN_DIR", "/run/localaid")
STATE_DIR = os.environ.get("LOCALAID_STATE_DIR", "/var/lib/localaid")
CONFIG_FILE = os.environ.get("LOCALAID_CONFIG", "/etc/localaid/localaid.yaml")
CONFIG_DIR = os.environ.get("LOCALAID_CONFIG_D", "/etc/localaid/conf.d")
SHARE_DIR = "/usr/share/localaid"
VENDOR_DIR = "/usr/lib/localaid/vendor"

OLLAMA_HOME = "/usr/share/ollama"  # the home its install script gives user ollama
OLLAMA_MODELS_DIR = OLLAMA_HOME + "/.ollama/models"  # where Ollama keeps models unless ollama.models_dir says

STATUS_FILE = os.path.join(RUN_DIR, "status.json")
PROGRESS_DIR = os.path.join(RUN_DIR, "progress")
MAINTENANCE_DIR = os.path.join(RUN_DIR, "maintenance")
FIREWALL_FILE = os.path.join(RUN_DIR, "ollama-firewall.json")  # whether ollama.allow_from is enforced
BACKUP_STATUS_FILE = os.path.join(STATE_DIR, "backup-status.json")  # the last backup's outcome
MODEL_CHOICE_FILE = os.path.join(STATE_DIR, "model-choice.json")  # ollama.models: auto, the pick kept
TLS_DIR = "/etc/localaid/tls"  # webui.tls: the local CA, the served pair
TLS_STATE_FILE = os.path.join(STATE_DIR, "https", "certificate.json")  # the served certificate, as installed
