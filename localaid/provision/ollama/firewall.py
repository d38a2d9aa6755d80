"""ollama.allow_from: systemd's per-unit firewall for Ollama's API, and whether it holds here.

The drop-in (dropin.py) gets ``IPAddressAllow=localhost <allow_from>`` and ``IPAddressDeny=any``.
systemd enforces these with a BPF program attached to the unit's cgroup; where it cannot attach
one (cgroup v1 hierarchies, bpf() filtered by a container manager) it only logs a warning and
the unit runs unfiltered. We measured that on our test hosts: `IPAddressDeny=any` blocked nothing.
So localaid never claims the protection without proof: a transient unit with ``IPAddressDeny=any``
connects to a closed loopback port; EPERM or a timeout means the filter dropped the packet
(enforced; kernels differ in which), a refused or accepted connection means it went through (not
enforced). The verdict is kept in
/run/localaid/ollama-firewall.json for STATUS (observe.py) and shown by `localaid doctor`.

The filter applies to everything the unit sends and receives: with allow_from set, Ollama's own
downloads (model pulls) reach only the listed addresses (README: a proxy in allow_from).
"""

from __future__ import annotations

import os
import time

from localaid import fsutil, paths

STATE_FILE = paths.FIREWALL_FILE
PROBE_UNIT = "localaid-firewall-probe"
PROBE = ("import errno, socket\n"
         "s = socket.socket()\n"
         "s.settimeout(3)\n"
         "try:\n"
         "    s.connect(('127.0.0.1', 9))\n"
         "    print('connected')\n"
         "except socket.timeout:\n"
         "    print('TIMEOUT')\n"
         "except OSError as e:\n"
         "    print(errno.errorcode.get(e.errno, e.errno))\n")
NOT_ENFORCED = "Ollama's API is open to the network: systemd cannot enforce ollama.allow_from here"


def dropin_lines(cfg) -> list[str]:
    """The drop-in's firewall lines for ollama.allow_from (none when it is empty)."""
    if not cfg.allow_from:
        return []
    return ["", "# ollama.allow_from: who may reach the API besides loopback (systemd's BPF firewall;",
            "# `localaid doctor` says whether this host enforces it). Ollama's own downloads too.",
            "IPAddressAllow=localhost " + " ".join(cfg.allow_from), "IPAddressDeny=any"]


def probe(host) -> tuple[bool | None, str]:
    """(enforced, words): True when systemd dropped a denied connection, False when it let it
    through, None when the probe could not run."""
    r = host.run(["systemd-run", f"--unit={PROBE_UNIT}-{os.getpid()}", "--quiet", "--wait", "--pipe", "--collect",
                  "--property=IPAddressDeny=any", "--property=DynamicUser=yes", "--property=PrivateTmp=yes",
                  "--", "/usr/bin/python3", "-c", PROBE], timeout=30)
    answer = r.last.strip() if r.tail else ""
    if answer in ("EPERM", "TIMEOUT"):  # on loopback only a filter drops a SYN (a closed port refuses)
        return True, f"enforced (a denied connection was dropped: {answer})"
    if answer in ("ECONNREFUSED", "connected"):
        return False, f"not enforced: a unit with IPAddressDeny=any still reached 127.0.0.1 ({answer})"
    return None, f"could not be checked ({answer or 'no answer'}, exit status {r.rc})"


def record(enforced: bool | None, words: str, allow_from) -> None:
    fsutil.write_json(STATE_FILE, {"enforced": enforced, "words": words, "allow_from": list(allow_from),
                                   "at": time.time()}, mode=0o644)
