"""Ollama through its install script, in a booted Debian 12 container.

The download site is tests/fakes/ollama/server.py on host 127.0.0.1 (HTTPS with a test CA that
the container trusts); as the real one it redirects archive downloads to another host (its
release host, "localhost" on another port). Its install script and release archives honour the
real contract (see shared/research/ollama-install-script.md), the .tgz fallback of old releases
and the GPU branch included: the container's lspci (tests/fakes/bin/lspci) shows an NVIDIA card
and there is no nvidia-smi, so the script, left to itself, would install cuda-drivers with
apt-get. The "Ollama" they install is tests/fakes/ollama/ollama. Host tools needed: openssl, zstd.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from harness import free_port, wait_for

FAKES = Path(__file__).resolve().parents[1] / "fakes" / "ollama"
LSPCI = FAKES.parent / "bin" / "lspci"
sys.path.insert(0, str(FAKES))

import server as fake_site  # noqa: E402

# A space and a % in it: written into the drop-in quoted for systemd (%% for %), it must reach
# Ollama's environment and ReadWritePaths= as it is (a pull has to land there under ProtectSystem=).
MODELS_DIR = "/srv/ollama 100% models"
SECRET = 'hf_S3CR3T "q" $HOME `id` 100%'


PORT = free_port()
CONFIG = """\
ollama:
  install_script: {url}
  port: {port}
  allow_from: [10.9.8.7]
  version: "0.9.0"
  install_timeout: 30s
  models_dir: "{models}"
  keep_alive: forever
  num_parallel: 2
  environment:
    OLLAMA_FLASH_ATTENTION: "1"
    LOCALAID_TEST_TOKEN: '{secret}'
  models:
    - tinyllama
    - name: qwen2.5:0.5b
      keep_warm: false
webui:
  enabled: false
gpu:
  devices:
    mode: "off"
  watch: false
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = fake_site.FakeOllamaSite(tmp_path_factory.mktemp("ollama-site"), slow_seconds=20).start()
    yield s
    s.stop()


def trust_ca(site):
    def setup(c):
        c.write("/usr/local/share/ca-certificates/localaid-test-ca.crt", site.ca_pem)
        c.run(["update-ca-certificates"])
        c.write("/usr/bin/lspci", LSPCI.read_text(), mode=0o755)  # an NVIDIA card, and no driver
    return setup


@pytest.fixture(scope="module")
def container_options(site):
    return {"config": CONFIG.format(url=site.script_url, models=MODELS_DIR, port=PORT, secret=SECRET),
            "setup": trust_ca(site)}


def setup_state(c) -> dict:
    raw = c.run(["cat", "/run/localaid/progress/ollama-setup.json"], check=False).stdout
    return json.loads(raw) if raw.strip() else {}


def run_setup(c) -> tuple[int, dict]:
    """Start the job unit and wait for it (systemctl start of a oneshot blocks until it ends)."""
    r = c.systemctl("start", "localaid-ollama-setup.service", check=False, timeout=300)
    return r.returncode, setup_state(c)


def api(c, path="/") -> str:
    return c.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{PORT}{path}"], check=False).stdout


def binary_version(c) -> str:
    out = c.run(["env", "OLLAMA_HOST=127.0.0.1:1", "/usr/local/bin/ollama", "--version"], check=False).stdout
    m = re.search(r"client version is (\S+)", out)
    return m.group(1) if m else out


# ---------------------------------------------------------------------------------- the happy path
def test_installing_the_deb_provisions_ollama(container, site):
    c = container
    # localaid.service starts localaid-ollama-setup.service on its first cycle; starting it here
    # too joins that run (or makes one when the daemon has not got to it yet).
    rc, state = run_setup(c)
    assert rc == 0 and state["state"] == "done", state
    assert f"Ollama 0.9.0 installed and running at http://127.0.0.1:{PORT}" in state["text"], state
    assert c.run(["systemctl", "is-enabled", "ollama.service"], check=False).stdout.strip() == "enabled"
    assert c.is_active("ollama.service") == "active"
    assert api(c) == "Ollama is running"
    assert json.loads(api(c, "/api/version")) == {"version": "0.9.0"}
    assert binary_version(c) == "0.9.0"
    # The script's unit is untouched; localaid's settings live in its drop-in.
    unit = c.read("/etc/systemd/system/ollama.service")
    assert "ExecStart=/usr/local/bin/ollama serve" in unit and "OLLAMA_HOST" not in unit
    dropin = c.read("/etc/systemd/system/ollama.service.d/50-localaid.conf")
    escaped = MODELS_DIR.replace("%", "%%")
    for line in (f'Environment="OLLAMA_HOST=127.0.0.1:{PORT}"', f'Environment="OLLAMA_MODELS={escaped}"',
                 'Environment="OLLAMA_KEEP_ALIVE=-1"', 'Environment="OLLAMA_NUM_PARALLEL=2"',
                 f'ReadWritePaths="-{escaped}"', "After=localaid-devices.service",
                 "EnvironmentFile=-/etc/systemd/system/ollama.service.d/50-localaid.env"):
        assert line in dropin.splitlines(), line
    env = c.unit_property("ollama.service", "Environment")
    assert f"OLLAMA_MODELS={MODELS_DIR}" in env and "OLLAMA_KEEP_ALIVE=-1" in env
    assert MODELS_DIR in c.unit_property("ollama.service", "ReadWritePaths")
    # ollama.environment (it may hold tokens): only in the 0600 file, and Ollama gets it as written.
    envfile = "/etc/systemd/system/ollama.service.d/50-localaid.env"
    assert c.run(["stat", "-c", "%a %U:%G", envfile]).stdout.strip() == "600 root:root"
    assert "S3CR3T" not in dropin and "S3CR3T" not in env and "S3CR3T" in c.read(envfile)
    environ = c.read(f"/proc/{c.unit_property('ollama.service', 'MainPID')}/environ").split("\0")
    assert "OLLAMA_FLASH_ATTENTION=1" in environ and f"LOCALAID_TEST_TOKEN={SECRET}" in environ
    assert f"OLLAMA_MODELS={MODELS_DIR}" in environ
    assert c.unit_property("ollama.service", "User") == "ollama"
    # Models directory made for user ollama (Ollama issues #2701, #9877); configured models pulled.
    assert c.run(["stat", "-c", "%U:%G", MODELS_DIR]).stdout.strip() == "ollama:ollama"
    tags = {m["name"] for m in json.loads(api(c, "/api/tags"))["models"]}
    assert {"tinyllama:latest", "qwen2.5:0.5b"} <= tags
    assert c.exists(f"{MODELS_DIR}/manifests/registry.ollama.ai/library/tinyllama/latest")
    journal = c.journal("localaid-ollama-setup.service")
    assert "installer: >>> Installing ollama to /usr/local" in journal
    assert "created user ollama (home /usr/share/ollama), as the install script would" in journal
    assert "Traceback" not in journal


def test_the_archive_came_through_the_redirect_and_the_gpu_branch_never_ran(container, site):
    """The script ran while `apt install` held dpkg's lock, on a machine whose lspci shows an
    NVIDIA card and no nvidia-smi: left to itself it would have run apt-get install cuda-drivers
    (test_control_the_script_alone_takes_the_gpu_branch shows it does). localaid hid lspci/lshw."""
    c = container
    assert "NVIDIA Corporation AD104" in c.run(["lspci", "-d", "10de:"]).stdout
    assert not c.exists(fake_site.GPU_BRANCH_LOG)
    journal = c.journal("localaid-ollama-setup.service")
    assert "installer: WARNING: No NVIDIA/AMD GPU detected. Ollama will run in CPU-only mode." in journal
    assert "Installing NVIDIA repository" not in journal and "cuda-drivers" not in journal
    archive = "ollama-linux-amd64.tar.zst"
    assert ("HEAD", f"/download/{archive}?version=0.9.0") in site.requests
    assert ("GET", f"/ollama/ollama/releases/download/v0.9.0/{archive}") in site.requests  # on the release host


def test_the_setup_job_is_sandboxed(container):
    """The install script ran (above) inside localaid-ollama-setup.service's sandbox."""
    out = container.run(["systemd-analyze", "security", "--no-pager", "localaid-ollama-setup.service"],
                        check=False).stdout
    m = re.search(r"Overall exposure level for localaid-ollama-setup\.service: ([0-9.]+)", out)
    assert m, out[-2000:]
    assert float(m.group(1)) <= 5.0, out
    assert container.unit_property("localaid-ollama-setup.service", "ProtectSystem") == "strict"


def test_second_run_downloads_nothing_and_leaves_ollama_alone(container, site):
    c = container
    pid = c.unit_property("ollama.service", "MainPID")
    site.requests.clear()
    rc, state = run_setup(c)
    assert rc == 0 and state["state"] == "done", state
    assert site.requests == []
    assert c.unit_property("ollama.service", "MainPID") == pid
    assert "Ollama 0.9.0 running" in state["text"]


def test_ollama_service_is_hardened(container):
    out = container.run(["systemd-analyze", "security", "--no-pager", "ollama.service"], check=False).stdout
    m = re.search(r"Overall exposure level for ollama\.service: ([0-9.]+)", out)
    assert m, out[-2000:]
    assert float(m.group(1)) <= 2.0, out
    # The hardened service still writes its models: a pull through the API lands on disk.
    r = container.run(["curl", "-s", "--max-time", "30", f"http://127.0.0.1:{PORT}/api/pull",
                       "-d", '{"model": "smollm:135m", "stream": false}'])
    assert '"success"' in r.stdout
    assert container.exists(f"{MODELS_DIR}/manifests/registry.ollama.ai/library/smollm/135m")


def test_allow_from_is_the_units_firewall_and_never_claimed_unchecked(container):
    """ollama.allow_from becomes IPAddressAllow=/IPAddressDeny=any. systemd attaches that filter
    with bpf(), which these containers' system call filter (nspawn's default) denies, whatever the
    host's cgroup hierarchy: the set-up job's probe finds that out, and STATUS and doctor say the
    API is open instead of claiming a protection. (test_fleet.py requires the enforced path, in
    containers that allow bpf().)"""
    c = container
    dropin = c.read("/etc/systemd/system/ollama.service.d/50-localaid.conf")
    assert "IPAddressAllow=localhost 10.9.8.7\nIPAddressDeny=any\n" in dropin
    assert c.unit_property("ollama.service", "IPAddressDeny") != ""  # systemd took it
    verdict = json.loads(c.read("/run/localaid/ollama-firewall.json"))
    assert verdict["allow_from"] == ["10.9.8.7"] and verdict["enforced"] is False, verdict
    assert "not enforced" in verdict["words"], verdict
    doctor = c.run(["localaid", "doctor"], check=False).stdout
    line = next(x for x in doctor.splitlines() if "ollama allow_from" in x)
    assert line.startswith("[FAIL]") and "not enforced" in line, line
    wait_for(lambda: "ollama API open to the network (allow_from not enforced here"
             in c.unit_property("localaid", "StatusText"), timeout=15)
    print(f"\n{line}")


def test_models_pull_and_doctor_commands(container):
    c = container
    r = c.run(["localaid", "pull", "llama3.2:1b"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "llama3.2:1b: pulling manifest" in r.stdout and "llama3.2:1b: 50% " in r.stdout
    assert re.search(r"pulled llama3.2:1b \([0-9.]+ [GM]B\) in", r.stdout)
    r = c.run(["localaid", "pull", "no-such-model"], check=False)
    assert r.returncode == 1 and "file does not exist" in r.stderr
    r = c.run(["curl", "-s", f"http://127.0.0.1:{PORT}/api/generate", "-d", '{"model": "tinyllama"}'])
    assert '"done_reason": "load"' in r.stdout
    doc = json.loads(c.run(["localaid", "models", "--json"]).stdout)
    where = {m["name"]: m["where"] for m in doc["models"]}
    assert where["tinyllama:latest"] == "CPU" and where["llama3.2:1b"] == "-"  # no GPU in the container
    table = c.run(["localaid", "models"]).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "SIZE"] and table[1].startswith("tinyllama:latest")
    doctor = c.run(["localaid", "doctor"], check=False).stdout
    for line in ("[ok  ] ollama install: Ollama 0.9.0 at /usr/local/bin/ollama",
                 "[ok  ] ollama unit: ollama.service enabled",
                 "[ok  ] ollama drop-in: /etc/systemd/system/ollama.service.d/50-localaid.conf matches",
                 f"[ok  ] ollama models dir: {MODELS_DIR} owned by ollama",
                 "[ok  ] ollama models: all 2 configured models present"):
        assert line in doctor, doctor
    assert f"[ok  ] ollama api: Ollama 0.9.0 answers at http://127.0.0.1:{PORT}" in doctor


# ------------------------------------------------------------------------------------------ faults
FAULTS = {
    # name: (site mode, conf.d text, words the failure must contain)
    "http-404": ({"script": "404"}, "", ["install script download failed: HTTP 404 from https://127.0.0.1:"]),
    "html-page": ({"script": "html"}, "", ["is an HTML page, not a shell script"]),
    "truncated": ({"script": "truncated"}, "", ["truncated download"]),
    "timeout": ({"script": "slow"}, "", ["no answer from https://127.0.0.1:"]),
    "wrong-sha256": ({}, "ollama:\n  install_script_sha256: " + "0" * 64 + "\n", ["sha256", "refusing to run it"]),
    "script-fails": ({"script": "fail"}, "", ["install script exited with status 1",
                                              "previous Ollama 0.9.0 restored and running"]),
    "archive-cut": ({"archive": "broken"}, "", ["install script exited with status",
                                                "previous Ollama 0.9.0 restored and running"]),
}


@pytest.fixture(scope="module")
def supervisor_stopped(container):
    """localaid.service would retry a failed job with backoff: keep it out of the fault tests."""
    container.systemctl("stop", "localaid.service")
    yield
    container.systemctl("start", "localaid.service", check=False)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_failed_install_keeps_ollama_working(container, site, supervisor_stopped, fault):
    c = container
    mode, conf, words = FAULTS[fault]
    # Ask for 0.9.1, so the install script has to run.
    c.write("/etc/localaid/conf.d/50-test.yaml", 'ollama:\n  version: "0.9.1"\n' + conf.replace("ollama:\n", ""))
    site.mode.update({"script": "ok", "archive": "ok", **mode})
    t0 = time.monotonic()
    try:
        rc, state = run_setup(c)
    finally:
        site.mode.update({"script": "ok", "archive": "ok"})
        c.run(["rm", "-f", "/etc/localaid/conf.d/50-test.yaml"])
    took = time.monotonic() - t0
    assert rc != 0
    assert state["state"] == "failed", state
    for w in words:
        assert w in state["text"], state
    assert took < 120
    # Ollama 0.9.0 still installed, running and answering, its libraries intact.
    assert binary_version(c) == "0.9.0"
    assert "fake ggml base 0.9.0" in c.read("/usr/local/lib/ollama/libggml-base.so")
    wait_for(lambda: api(c) == "Ollama is running", timeout=30)
    assert json.loads(api(c, "/api/version")) == {"version": "0.9.0"}
    assert not c.exists("/run/localaid/maintenance/ollama")
    journal = c.journal("localaid-ollama-setup.service")
    assert "Traceback" not in journal
    if fault == "http-404":
        assert "retrying in 2 s" in journal
    if fault in ("script-fails", "archive-cut"):
        assert state["detail"], state  # the installer's last lines, for `localaid status`


def test_upgrade_switches_version(container, site):
    c = container
    r = c.run(["localaid", "upgrade", "ollama", "--version", "0.9.1"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Ollama 0.9.1 installed and running" in r.stdout
    assert "pins 0.9.0" in r.stdout  # the configuration still says 0.9.0: the user is told
    assert json.loads(api(c, "/api/version")) == {"version": "0.9.1"}
    assert binary_version(c) == "0.9.1"
    assert c.exists("/etc/systemd/system/ollama.service.d/50-localaid.conf")
    assert not c.exists("/run/localaid/maintenance/ollama")
    tags = {m["name"] for m in json.loads(api(c, "/api/tags"))["models"]}
    assert {"tinyllama:latest", "qwen2.5:0.5b"} <= tags  # models are never deleted
    # Asking again for the version that runs does nothing.
    site.requests.clear()
    r = c.run(["localaid", "upgrade", "ollama", "--version", "0.9.1"], check=False)
    assert r.returncode == 0 and "already 0.9.1" in r.stdout
    assert site.requests == []


def test_without_zstd_nothing_is_changed_and_the_fix_is_named(container, supervisor_stopped):
    """The release archive is a .tar.zst: the script fails without zstd (a Depends of the .deb,
    but removable). localaid says so before it touches anything."""
    c = container
    have = binary_version(c)
    c.run(["mv", "/usr/bin/zstd", "/usr/bin/zstd.away"])
    c.write("/etc/localaid/conf.d/50-test.yaml", 'ollama:\n  version: "0.9.0"\n' if have != "0.9.0" else
            'ollama:\n  version: "0.9.1"\n')
    try:
        rc, state = run_setup(c)
    finally:
        c.run(["mv", "/usr/bin/zstd.away", "/usr/bin/zstd"])
        c.run(["rm", "-f", "/etc/localaid/conf.d/50-test.yaml"])
    assert rc != 0 and state["state"] == "failed", state
    assert "missing tools: zstd (apt install zstd)" in state["text"], state
    assert binary_version(c) == have
    wait_for(lambda: api(c) == "Ollama is running", timeout=30)


def test_an_old_release_comes_as_tgz(container, site):
    """Releases from before the switch to zstd exist only as .tgz: the script finds no .tar.zst
    and falls back to it, through the same redirect."""
    c = container
    site.requests.clear()
    r = c.run(["localaid", "upgrade", "ollama", "--version", "0.5.7"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert binary_version(c) == "0.5.7"
    assert json.loads(api(c, "/api/version")) == {"version": "0.5.7"}
    assert ("HEAD", "/ollama/ollama/releases/download/v0.5.7/ollama-linux-amd64.tar.zst") in site.requests
    assert ("GET", "/ollama/ollama/releases/download/v0.5.7/ollama-linux-amd64.tgz") in site.requests
    assert "Downloading ollama-linux-amd64.tgz" in r.stdout + r.stderr


# ----------------------------------------------------------------------------------------- at boot
EARLY_UNIT = """\
[Unit]
Description=test: localaid provision ollama while the system is still starting
After=network-online.target
Wants=network-online.target
Before=multi-user.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/bin/sh -c 'cp /opt/early/ca.crt /usr/local/share/ca-certificates/localaid-test-ca.crt && update-ca-certificates'
ExecStartPre=/bin/sh -c 'systemctl is-system-running > /run/early-system-state || true'
Environment=PYTHONPATH=/opt/localaid-src
ExecStart=/usr/bin/python3 -m localaid --config /opt/early/localaid.yaml provision ollama
"""


def test_provision_during_boot_still_enables_ollama(make_container, site, tmp_path):
    """Ollama's script enables its unit only when `systemctl is-system-running` says running or
    degraded. Run localaid's provisioning from a unit that multi-user.target waits for (so the
    system really is "starting"), with localaid's code from this tree, and check that localaid
    enabled and started ollama.service itself."""
    early = tmp_path / "early"
    (early / "target.d").mkdir(parents=True)
    (early / "ca.crt").write_text(site.ca_pem)
    port = free_port()
    (early / "localaid.yaml").write_text(f"ollama:\n  install_script: {site.script_url}\n  port: {port}\n")
    (early / "localaid-early-provision.service").write_text(EARLY_UNIT)
    (early / "target.d" / "early.conf").write_text("[Unit]\nWants=localaid-early-provision.service\n")
    src = Path(__file__).resolve().parents[2] / "localaid"
    site.mode.update(script="ok", archive="ok")
    c = make_container(binds=[
        (early, "/opt/early", True),
        (src, "/opt/localaid-src/localaid", True),
        (early / "localaid-early-provision.service", "/etc/systemd/system/localaid-early-provision.service", True),
        (early / "target.d", "/etc/systemd/system/multi-user.target.d", True),
    ])
    assert c.read("/run/early-system-state").strip() == "starting"
    assert c.is_active("localaid-early-provision.service") == "active", c.journal("localaid-early-provision")
    journal = c.journal("localaid-early-provision.service")
    assert "installer: WARNING: systemd is not running" in journal  # the script did not enable it
    assert "enabled ollama.service" in journal  # localaid did
    assert c.run(["systemctl", "is-enabled", "ollama.service"], check=False).stdout.strip() == "enabled"
    assert c.is_active("ollama.service") == "active"
    r = c.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/"], check=False)
    assert r.stdout == "Ollama is running"


# ----------------------------------------------------------------------------------------- control
def test_control_the_script_alone_takes_the_gpu_branch(container, site):
    """The same install script, run by hand as root (no localaid in between) while something
    holds dpkg's lock, as `apt install localaid` does while its postinst runs: it records that it
    took the GPU branch and its apt-get meets the lock. (Last: it reinstalls Ollama.)"""
    c = container
    c.run(["curl", "-fsS", "-o", "/root/install.sh", site.script_url])
    hold = ("import fcntl, subprocess, sys\n"
            "lock = open('/var/lib/dpkg/lock-frontend', 'w')\n"
            "fcntl.lockf(lock, fcntl.LOCK_EX)\n"
            "sys.exit(subprocess.run(['sh', '/root/install.sh']).returncode)\n")
    r = c.run(["python3", "-c", hold], check=False, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Installing NVIDIA repository" in out
    assert "apt-get -y install cuda-drivers" in c.read(fake_site.GPU_BRANCH_LOG)
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in out, out
