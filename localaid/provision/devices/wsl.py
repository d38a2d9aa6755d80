"""`localaid doctor`'s WSL2 checks: what makes localaid serve under WSL2, and what keeps it from it.

    systemd     /etc/wsl.conf [boot] systemd=true (WSL's own default is off)
    idle        WSL stops an idle VM, and systemd services are no activity to it
    windows     Windows reaches Open WebUI through WSL's localhost forwarding (a relay inside the
                VM connects to 127.0.0.1): webui.listen on loopback or all addresses
    nvml        the libnvidia-ml this process loaded is WSL's (/usr/lib/wsl/...); a Linux driver's
                copy shadowing it breaks CUDA (ollama#1898, #1940)
The check builders are pure (texts in, Checks out); checks() reads the files and runs them.
"""

from __future__ import annotations

import configparser
import glob
import ipaddress

from localaid import procfs
from localaid.records import Check

WSL_CONF = "/etc/wsl.conf"
WSLCONFIG_GLOB = "/mnt/c/Users/*/.wslconfig"  # %UserProfile%\.wslconfig, where drvfs mounts C:
WSL_LIB_PREFIX = "/usr/lib/wsl/"  # lib/ and the driver store (drivers/) its links point into
LINUX_NVML_PACKAGES = "apt purge 'libnvidia-ml*' 'nvidia-driver*' (Windows' driver serves WSL)"


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.optionxform = str.lower
    try:
        parser.read_string(text or "")
    except configparser.Error:
        pass
    return parser


def _value(text: str, section: str, key: str) -> str | None:
    parser = _ini(text)
    for name in parser.sections():
        if name.strip().lower() == section and parser.has_option(name, key):
            return parser.get(name, key).strip().strip('"').lower()
    return None


def systemd_check(wsl_conf: str | None) -> Check:
    """[boot] systemd=true in /etc/wsl.conf (None: the file is missing)."""
    on = _value(wsl_conf or "", "boot", "systemd") == "true"
    if on:
        return Check("wsl2 systemd", True, f"{WSL_CONF}: [boot] systemd=true")
    where = "missing" if wsl_conf is None else "has no [boot] systemd=true"
    return Check("wsl2 systemd", False, f"{WSL_CONF} {where}: WSL starts without systemd, and localaid with it",
                 f"add [boot] systemd=true to {WSL_CONF}, then run `wsl --shutdown` in Windows and start WSL again")


def idle_check(wslconfigs: dict[str, str]) -> Check:
    """A warning in any case: nothing inside the VM can tell whether Windows keeps it running.
    Names the vmIdleTimeout of each .wslconfig found (milliseconds; WSL's default 60000)."""
    found = [f"{path}: vmIdleTimeout={_value(text, 'wsl2', 'vmidletimeout') or 'not set (60000 ms)'}"
             for path, text in sorted(wslconfigs.items())]
    seen = "; ".join(found) if found else "no .wslconfig found under /mnt/c/Users"
    return Check("wsl2 idle", None,
                 f"WSL shuts an idle VM down, and services (Ollama, Open WebUI) do not keep it running ({seen})",
                 "while it should serve, keep a WSL session open (e.g. a Windows task at logon running "
                 "`wsl.exe --exec sleep infinity`) and raise vmIdleTimeout under [wsl2] in %UserProfile%\\.wslconfig")


def windows_check(webui_enabled: bool, host: str, port: int) -> Check:
    """Open WebUI where WSL's localhost forwarding reaches it: 127.0.0.1 or all addresses."""
    if not webui_enabled:
        return Check("wsl2 windows", True, "Open WebUI is off (webui.enabled): nothing for Windows to reach",
                     skipped=True)
    try:
        addr = ipaddress.ip_address(host)
        reached = (addr.version == 4 and (addr.is_loopback or addr.is_unspecified)) or addr == ipaddress.ip_address("::")
    except ValueError:
        reached = host == "localhost"
    url = f"http://localhost:{port}"
    if reached:
        return Check("wsl2 windows", True, f"Windows reaches Open WebUI at {url} (WSL's localhost forwarding)")
    return Check("wsl2 windows", None, f"Open WebUI listens on {host}:{port}: WSL's localhost forwarding "
                 f"connects to 127.0.0.1, so Windows' {url} does not reach it",
                 f"webui.listen: 127.0.0.1:{port} (or 0.0.0.0:{port} to serve the network too)")


def loaded_nvml(maps: str) -> str | None:
    """The libnvidia-ml file mapped into a process, from its /proc/PID/maps text."""
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and "/libnvidia-ml.so" in parts[5]:
            return parts[5].strip()
    return None


def nvml_check(loaded: str | None, others: tuple[str, ...]) -> Check:
    """`loaded`: the library this process mapped; `others`: Linux-driver copies on disk."""
    if loaded is None:
        return Check("wsl2 nvml", None, "no libnvidia-ml loaded (NVML did not start)",
                     "Windows' NVIDIA driver puts it in /usr/lib/wsl/lib: update the Windows driver; "
                     "check /etc/ld.so.conf.d/ld.wsl.conf and run ldconfig")
    if not loaded.startswith(WSL_LIB_PREFIX):
        return Check("wsl2 nvml", False, f"{loaded} is loaded, a Linux driver's copy shadowing WSL's "
                     "/usr/lib/wsl/lib/libnvidia-ml.so.1: CUDA fails or falls back to the CPU",
                     LINUX_NVML_PACKAGES + "; then ldconfig")
    extra = f"; also installed, unused: {', '.join(others)}" if others else ""
    return Check("wsl2 nvml", True if not others else None, f"WSL's NVML: {loaded}{extra}",
                 LINUX_NVML_PACKAGES if others else "")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def checks(config) -> list[Check]:
    """The WSL2 checks, for a process that has already asked NVML (doctor's GPU check)."""
    configs = {p: t for p in glob.glob(WSLCONFIG_GLOB) if (t := _read(p)) is not None}
    linux_copies = tuple(dict.fromkeys(p for d in procfs.NVML_LIB_DIRS if d != procfs.WSL_LIB_DIR
                                       and (p := procfs.nvml_library((d,))) is not None))
    return [systemd_check(_read(WSL_CONF)), idle_check(configs),
            windows_check(config.webui.enabled, config.webui.host, config.webui.port),
            nvml_check(loaded_nvml(_read("/proc/self/maps") or ""), linux_copies)]
