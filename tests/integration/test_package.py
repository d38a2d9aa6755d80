"""The .deb in a clean systemd container, and the container harness itself."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import guest_deb_path
from harness import SLEEPING_OLLAMA_UNIT, WORK_BASE, Container, reap_stale, wait_for

HERE = Path(__file__).resolve().parent

# Nothing in these tests may reach the internet: no installer, no Open WebUI.
CONFIG = """\
ollama:
  install_script: /nonexistent/install.sh
webui:
  enabled: false
"""



def _standin_ollama(c: Container) -> None:
    c.write("/etc/systemd/system/ollama.service", SLEEPING_OLLAMA_UNIT)
    c.systemctl("daemon-reload")
    c.systemctl("enable", "--now", "ollama.service")


@pytest.fixture(scope="module")
def container_options():
    return {"config": CONFIG, "setup": _standin_ollama}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


def _mounts_under(path: Path) -> list[str]:
    return [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()
            if ln.split()[1].startswith(str(path))]


# --------------------------------------------------------------------------- harness

def test_container_boots_and_teardown_leaves_nothing(rootfs):
    c = Container(rootfs, name="harness-selftest")
    c.start()
    try:
        assert c.run(["systemctl", "is-system-running"], check=False).stdout.strip() in ("running", "degraded")
        assert c.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        assert c.run(["hostname"]).stdout.strip() == c.name
        c.write("/etc/harness-test", "x\n", mode=0o600)
        assert c.read("/etc/harness-test") == "x\n"
        assert c.run(["stat", "-c", "%a", "/etc/harness-test"]).stdout.strip() == "600"
        assert not (Path(rootfs) / "etc/harness-test").exists(), "the cached rootfs must stay pristine"
        nspawn_pid, leader, workdir = c.proc.pid, c.leader, c.workdir
        print(f"copy+boot: {c.timings}")
    finally:
        c.stop()
    assert not _alive(nspawn_pid)
    assert not _alive(leader)
    assert not workdir.exists()
    assert _mounts_under(workdir) == []


def test_boot_failure_is_reported_with_diagnostics(rootfs, tmp_path):
    with pytest.raises(Exception, match="bind source"):
        Container(rootfs, binds=[(tmp_path / "missing", "/mnt/x", True)], name="bad-bind").start()
    assert not [d for d in WORK_BASE.glob("bad-bind-*")]


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    from harness import Container
    c = Container({rootfs!r}, name={name!r}).start()
    print(c.proc.pid, c.leader, c.workdir, flush=True)
    time.sleep(600)
""")


def _start_child(rootfs, name):
    code = _CHILD.format(here=str(HERE), rootfs=str(rootfs), name=name)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    assert line, "child did not start a container"
    return p, int(line[0]), int(line[1]), Path(line[2])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_run_leaks_nothing(rootfs, sig):
    """SIGTERM: the harness tears down itself. SIGKILL: the next run reaps by recorded PID."""
    p, nspawn_pid, leader, workdir = _start_child(rootfs, f"interrupt-{sig.name.lower()}")
    assert _alive(nspawn_pid) and workdir.exists()
    p.send_signal(sig)
    p.wait(timeout=60)
    if sig == signal.SIGKILL:
        assert _alive(nspawn_pid), "nspawn survives its owner's SIGKILL (new session)"
        reap_stale()  # (another concurrent run may already have reaped it)
    wait_for(lambda: not _alive(nspawn_pid) and not _alive(leader), timeout=20)
    assert not workdir.exists()
    assert _mounts_under(workdir) == []


# --------------------------------------------------------------------------- package

def test_install_enables_and_starts_localaid(container):
    c = container
    assert c.run(["systemctl", "is-enabled", "localaid.service"], check=False).stdout.strip() == "enabled"
    print(f"timings: {c.timings}")
    # Contract: the daemon reaches READY early (provisioning reports through STATUS=).
    c.wait_for_unit("localaid.service", "active", timeout=30)
    assert c.unit_property("localaid", "Type") == "notify"
    status = wait_for(lambda: c.unit_property("localaid", "StatusText"), timeout=30,
                      message="a STATUS= line from localaid")
    assert status in c.systemctl("status", "localaid", check=False).stdout


def test_installed_files(container, deb):
    c = container
    # The administrator's file is not a conffile (postinst makes it from the shipped defaults when
    # absent), so upgrades never ask about it: see test_package_upgrade.py.
    conffiles = c.run(["dpkg-query", "-W", "-f=${Conffiles}", "localaid"]).stdout
    assert "/etc/localaid/localaid.yaml" not in conffiles
    assert c.read("/etc/localaid/localaid.yaml") == CONFIG, "a pre-seeded config must survive install"
    assert c.run(["test", "-d", "/etc/localaid/conf.d"], check=False).returncode == 0
    assert c.run(["test", "-x", "/usr/bin/localaid"], check=False).returncode == 0
    assert c.exists("/usr/share/man/man1/localaid.1.gz")
    # The shipped example configuration (replaced here by the pre-seeded one) is valid.
    c.sh(f"dpkg-deb --fsys-tarfile {guest_deb_path(deb)} | tar -xO ./usr/share/localaid/localaid.yaml "
         "> /tmp/shipped.yaml")
    assert c.read("/tmp/shipped.yaml") == c.read("/usr/share/localaid/localaid.yaml")
    c.run(["localaid", "config", "check", "/tmp/shipped.yaml"])
    c.run(["localaid", "config", "check"])
    # The bundled NVML bindings import with the distribution's python3 and nothing else.
    r = c.run(["python3", "-c", "import sys; sys.path.append('/usr/lib/localaid/vendor'); "
               "import pynvml; print(pynvml.__file__)"])
    assert r.stdout.strip().startswith("/usr/lib/localaid/vendor/pynvml.py")
    assert "Redistribution and use" in c.read("/usr/share/doc/localaid/LICENSE.nvidia-ml-py")
    # Every unit shipped in units/ is installed, only localaid.service is enabled.
    for unit in sorted(p.name for p in (HERE.parents[1] / "units").glob("*")
                       if p.suffix in (".service", ".timer", ".path", ".socket")):
        assert c.unit_property(unit, "LoadState") == "loaded", unit
        if unit != "localaid.service":
            assert c.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() != "enabled", unit


def test_unit_hardening_score(container):
    out = container.run(["systemd-analyze", "security", "--no-pager", "localaid.service"], check=False).stdout
    m = re.search(r"Overall exposure level for localaid.service: ([0-9.]+)", out)
    assert m, out[-2000:]
    print(f"systemd-analyze security localaid.service: {m.group(1)}")
    assert float(m.group(1)) <= 4.0, out


PRIVATE_BUS_PROBE = """
import time
from gi.repository import Gio, GLib
cap = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print("CapEff=" + cap)
con = Gio.DBusConnection.new_for_address_sync(
    "unix:path=/run/systemd/private", Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT, None, None)
for method, sig, args in (("StartUnit", "(ss)", ("probe-target.service", "replace")),
                          ("RestartUnit", "(ss)", ("probe-target.service", "replace")),
                          ("KillUnit", "(ssi)", ("probe-target.service", "all", 15))):
    con.call_sync("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                  "org.freedesktop.systemd1.Manager", method, GLib.Variant(sig, args), None, 0, 5000, None)
    print(method)
    time.sleep(0.5)
"""


def test_hardened_unit_can_manage_units_over_private_bus(container):
    """Under the same sandbox as localaid.service, a root process with no capabilities can
    still Start/Restart/Kill units through systemd's private socket."""
    c = container
    c.write("/etc/systemd/system/probe-target.service", "[Service]\nExecStart=/bin/sleep 1000\n")
    # Every sandboxing setting of the installed unit, as systemd-run properties.
    skip = ("Type", "NotifyAccess", "WatchdogSec", "Restart", "RestartSec", "TimeoutStartSec",
            "TimeoutStopSec", "KillMode", "RuntimeDirectory", "RuntimeDirectoryMode",
            "RuntimeDirectoryPreserve", "StateDirectory", "StateDirectoryMode")
    props, section = [], None
    for line in c.run(["systemctl", "cat", "localaid.service"]).stdout.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#") \
                and not line.startswith("Exec") and line.split("=", 1)[0] not in skip:
            props += ["-p", line]
    assert "-p" in props and "CapabilityBoundingSet=" in props
    c.systemctl("daemon-reload")
    r = c.run(["systemd-run", "--wait", "--pipe", "--quiet", *props, "python3", "-c", PRIVATE_BUS_PROBE],
              check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scheduler" not in r.stderr, r.stderr  # GLib's sched_setattr is allowed, not refused
    assert r.stdout.split() == ["CapEff=0000000000000000", "StartUnit", "RestartUnit", "KillUnit"], r.stdout
    assert c.is_active("probe-target.service") in ("inactive", "failed")  # killed with SIGTERM
    c.systemctl("stop", "probe-target.service", check=False)


def test_stopping_localaid_leaves_supervised_services_running(container):
    c = container
    assert c.is_active("ollama.service") == "active"
    c.systemctl("stop", "localaid.service")
    assert c.is_active("ollama.service") == "active"
    c.systemctl("start", "localaid.service", check=False)


def test_remove_then_purge(make_container):
    c = make_container(install=True, config=CONFIG, setup=_standin_ollama, name="remove-purge")
    c.sh("mkdir -p /var/lib/open-webui && echo precious > /var/lib/open-webui/marker")
    c.sh("mkdir -p /var/lib/localaid && echo state > /var/lib/localaid/marker")
    c.sh("echo '# edited by the admin' >> /etc/localaid/localaid.yaml")

    # An Open WebUI as localaid leaves it (a venv's entry point, its env file, enabled and running);
    # localaid stopped first, since with webui.enabled false it would take the service down itself.
    c.systemctl("stop", "localaid.service")
    c.sh("(getent passwd open-webui || useradd -r -U open-webui) && mkdir -p /var/lib/localaid/webui/current/bin /var/lib/localaid/webui/venvs "
         "&& chown open-webui: /var/lib/open-webui")
    c.write("/var/lib/localaid/webui/current/bin/open-webui", "#!/usr/bin/python3\nimport http.server\n"
            "http.server.ThreadingHTTPServer(('127.0.0.1', 3999), http.server.SimpleHTTPRequestHandler)"
            ".serve_forever()\n", mode=0o755)
    c.write("/etc/localaid/open-webui.env", "HOST=127.0.0.1\nPORT=3999\n")
    c.systemctl("enable", "--now", "open-webui.service")
    c.wait_for_unit("open-webui.service")

    t0 = time.monotonic()
    r = c.run(["apt-get", "remove", "-y", "-q", "localaid"])
    print(f"apt remove: {time.monotonic() - t0:.1f} s")
    assert c.is_active("localaid.service") in ("inactive", "failed", "unknown")
    assert c.is_active("ollama.service") == "active", "remove must not stop Ollama"
    # its unit file left with the package: stopped and disabled, not orphaned, and said so
    assert c.is_active("open-webui.service") in ("inactive", "unknown")
    assert not c.exists("/etc/systemd/system/multi-user.target.wants/open-webui.service")
    assert "stopping and disabling open-webui.service" in r.stdout + r.stderr
    assert "# edited by the admin" in c.read("/etc/localaid/localaid.yaml")
    assert c.exists("/var/lib/localaid/marker")

    # a backup (kept), and what a killed one leaves (removed)
    store = "/var/lib/localaid/backups"
    c.sh(f"mkdir -p {store}/20261206T031500Z-scheduled {store}/.partial-20261207T031500Z-scheduled && "
         f"echo '{{}}' > {store}/20261206T031500Z-scheduled/manifest.json")
    r = c.run(["apt-get", "purge", "-y", "-q", "localaid"])
    assert not c.exists("/etc/localaid")
    assert c.run(["ls", "-A", "/var/lib/localaid"]).stdout.split() == ["backups"]
    assert c.run(["ls", "-A", store]).stdout.split() == ["20261206T031500Z-scheduled"]
    assert f"1 backup(s) of Open WebUI's data (localaid restore puts one back after a new install): {store}/" \
        in r.stdout + r.stderr
    assert not c.exists("/run/localaid")
    assert c.read("/var/lib/open-webui/marker") == "precious\n"
    assert "/var/lib/open-webui" in r.stdout + r.stderr, "purge says where the remaining data is"
    assert c.is_active("ollama.service") == "active"


def test_reinstall_after_purge_and_upgrade_in_place(make_container, deb):
    c = make_container(install=True, config=CONFIG, name="reinstall")
    assert c.read("/etc/localaid/localaid.yaml") == CONFIG
    c.run(["apt-get", "install", "-y", "-q", "--reinstall", guest_deb_path(deb)])
    assert c.run(["systemctl", "is-enabled", "localaid.service"], check=False).stdout.strip() == "enabled"
    c.run(["apt-get", "purge", "-y", "-q", "localaid"])
    c.run(["apt-get", "install", "-y", "-q", guest_deb_path(deb)])
    # after a purge the documented defaults come back, mode 0644 root
    assert c.read("/etc/localaid/localaid.yaml") == c.read("/usr/share/localaid/localaid.yaml")
    assert c.run(["stat", "-c", "%a %U", "/etc/localaid/localaid.yaml"]).stdout.strip() == "644 root"
    assert c.run(["systemctl", "is-enabled", "localaid.service"], check=False).stdout.strip() == "enabled"
