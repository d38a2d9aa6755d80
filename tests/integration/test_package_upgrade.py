"""The package's own life cycle: `apt install` of this build over the previous release.

The previous release is built from its commit (PREVIOUS_RELEASE) with its own tools/build-deb
and cached under /var/cache/localaid-build/previous/, so reruns are quick. The upgrade must keep
the administrator's configuration without a conffile prompt, restart localaid (new code) and
leave the supervised services running: an upgrade of localaid is no reason to restart Ollama.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, guest_deb_path
from harness import SLEEPING_OLLAMA_UNIT, wait_for

# The last release (main as it landed before 0.2.0). Bump when a new one lands.
PREVIOUS_RELEASE = "e96570d"
CACHE = Path(os.environ.get("LOCALAID_BUILD_CACHE", "/var/cache/localaid-build")) / "previous"

CONFIG = """\
# edited by the administrator
ollama:
  install_script: /nonexistent/install.sh
webui:
  enabled: false
health:
  interval: 2s
"""
CONF_D = "health:\n  failures: 4\n"


@pytest.fixture(scope="module")
def previous_deb() -> Path:
    """The previous release's .deb, built once from its commit and cached."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", PREVIOUS_RELEASE + "^{commit}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        pytest.fail(f"the previous release {PREVIOUS_RELEASE} is not in this clone's history "
                    f"(a shallow clone?): {commit.stderr.strip()}")
    sha = commit.stdout.strip()
    cached = CACHE / f"localaid-{sha[:12]}.deb"
    if cached.is_file():
        return cached
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="localaid-prev-", dir="/var/tmp"))
    tree = work / "tree"
    try:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), sha],
                       check=True, capture_output=True, text=True)
        r = subprocess.run([str(tree / "tools/build-deb"), "--no-lintian", "--skip-setup"], cwd=tree,
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"building the previous release failed:\n{r.stderr[-4000:]}")
        built = Path(r.stdout.strip().splitlines()[-1])
        tmp = cached.with_suffix(".tmp")
        shutil.copyfile(built, tmp)
        tmp.rename(cached)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, text=True)
        shutil.rmtree(work, ignore_errors=True)
    return cached


def _version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _main_pid(c, unit: str) -> int:
    return int(c.unit_property(unit, "MainPID"))


def test_upgrade_from_the_previous_release_keeps_config_and_services(make_container, previous_deb, deb):
    old_v, new_v = _version(previous_deb), _version(deb)
    assert subprocess.run(["dpkg", "--compare-versions", new_v, "gt", old_v]).returncode == 0, \
        f"this build ({new_v}) must have a higher version than the previous release ({old_v})"
    prev_guest = "/mnt-prev/" + previous_deb.name
    c = make_container(with_deb=True, binds=[(str(previous_deb), prev_guest, True)], name="pkg-upgrade")
    c.write("/etc/systemd/system/ollama.service", SLEEPING_OLLAMA_UNIT)
    c.systemctl("daemon-reload")
    c.systemctl("enable", "--now", "ollama.service")

    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    c.run(env + ["apt-get", "install", "-y", "-q", prev_guest], timeout=600)
    c.wait_for_unit("localaid.service")
    # The administrator edits the shipped file and adds a drop-in, as README says.
    c.write("/etc/localaid/localaid.yaml", CONFIG)
    c.write("/etc/localaid/conf.d/50-site.yaml", CONF_D)
    c.systemctl("reload", "localaid.service")
    ollama_pid = _main_pid(c, "ollama.service")
    daemon_pid = _main_pid(c, "localaid.service")

    # A plain `apt install` with no --force-conf* option and no terminal: a conffile question
    # would fail the upgrade here (dpkg cannot ask), which is what we check for.
    r = c.run(env + ["apt-get", "install", "-y", "-q", guest_deb_path(deb)], timeout=600, input="")
    out = r.stdout + r.stderr
    assert "Configuration file '/etc/localaid/localaid.yaml'" not in out, out[-3000:]
    assert c.read("/etc/localaid/localaid.yaml") == CONFIG
    assert c.read("/etc/localaid/conf.d/50-site.yaml") == CONF_D
    assert c.run(["dpkg-query", "-W", "-f=${Version}", "localaid"]).stdout.strip() == new_v

    # localaid runs the new code; Ollama was not touched.
    wait_for(lambda: c.is_active("localaid.service") == "active" and _main_pid(c, "localaid.service") != daemon_pid,
             timeout=60, message="localaid restarted into the new version")
    assert _main_pid(c, "ollama.service") == ollama_pid, "the upgrade restarted ollama.service"
    assert c.run(["systemctl", "is-enabled", "localaid.service"], check=False).stdout.strip() == "enabled"
    status = c.run(["localaid", "status", "--json"], check=False).stdout
    assert '"version"' in status and new_v.split("-")[0] in status, status[-2000:]
    # the daemon runs with the administrator's settings
    show = c.run(["localaid", "config", "check"], check=False)
    assert show.returncode == 0, show.stdout + show.stderr
