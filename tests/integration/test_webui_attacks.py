"""Nothing the web app (or user ollama) controls becomes root's action, and no failure leaves the
user worse off: attacks and faults against the installed .deb in a booted Debian 12.

Open WebUI is the fake distribution of tests/fakes/open_webui, installed from the wheelhouse
test_webui.py builds; Ollama comes from the fake download site of tests/fakes/ollama, as in
test_ollama.py. The attacker is the service user itself (commands run as open-webui or ollama),
which runs code from the network by design; what it must never reach is root's files.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

import pytest

import test_webui as w
from conftest import install_deb
from harness import free_port, wait_for
from test_ollama import fake_site, run_setup, trust_ca
from test_webui import BASE, clear_faults, db_sha, localaid, progress, seed, serving, set_faults, stat

PORT = free_port()
CONFIG = w.CONFIG.replace(f"127.0.0.1:{w.PORT}", f"127.0.0.1:{PORT}")
DATA = "/var/lib/open-webui"
SITE = "lib/python3.11/site-packages"

# Every entry under the trees root must never change: type, mode, owner, and content (sha256)
# or link target. Run inside the container with its python3.
SNAPSHOT = r"""
import hashlib, json, os, stat, sys
out = {}
for top in sys.argv[1:]:
    for d, dirs, files in os.walk(top):
        for p in [d] + [os.path.join(d, n) for n in dirs + files]:
            st = os.lstat(p)
            what = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(p)
            out[p] = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid} {what}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def container_options(wheelhouse):  # noqa: F811
    return {"config": CONFIG, "setup": seed, "binds": [(str(wheelhouse), "/opt/wheelhouse", True)]}


def up(c, version: str) -> bool:
    return serving(c, version, PORT)


def snapshot(c, *tops: str) -> dict[str, str]:
    return json.loads(c.run(["python3", "-c", SNAPSHOT, *tops]).stdout)


def changes(before: dict, after: dict) -> list[str]:
    return sorted(f"{p}: {before.get(p)} => {after.get(p)}" for p in set(before) | set(after)
                  if before.get(p) != after.get(p))


def journal_step(c) -> str | None:
    r = c.run(["cat", f"{BASE}/upgrade.json"], check=False)
    return json.loads(r.stdout)["step"] if r.returncode == 0 and r.stdout.strip() else None


def background_upgrade(c, unit: str, version: str) -> None:
    c.run(["systemd-run", f"--unit={unit}", "--collect", "--property=KillMode=process",
           "/usr/bin/localaid", "upgrade", "webui", "--version", version])


def finished(c, unit: str, timeout: float = 240) -> None:
    wait_for(lambda: c.is_active(unit) in ("inactive", "failed", ""), timeout=timeout, interval=0.5,
             message=f"{unit} to end")


def serving_old(c, version: str = "0.12.4") -> str:
    """`version` serving from a fresh database, no other venv: a known start for each test."""
    c.systemctl("start", "localaid-webui-setup.service", timeout=300)  # installed (idempotent)
    c.systemctl("stop", "open-webui.service")
    c.run(["sh", "-c", f"ln -sfn venvs/{version} {BASE}/current.tmp && mv -T {BASE}/current.tmp {BASE}/current"])
    c.run(["sh", "-c", f"find {BASE}/venvs -mindepth 1 -maxdepth 1 ! -name {version} ! -name .cache "
                       f"-exec rm -rf {{}} + ; rm -f {DATA}/webui.db*"])
    c.write(f"{BASE}/installed.json", json.dumps({"version": version, "config_version": version}))
    clear_faults(c)
    c.systemctl("reset-failed", "open-webui.service", check=False)  # an earlier test's start limit
    c.systemctl("start", "open-webui.service")
    wait_for(lambda: up(c, version), timeout=60, message=f"Open WebUI {version} serving")
    return db_sha(c)


# ----------------------------------------------------------------------- the build sandbox
PROBE = r"""
echo "user=$(id -un)"
grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status | tr -d '\t' | sed 's/:/=/'
try() { if sh -c "$2" 2>/dev/null; then echo "$1=yes"; else echo "$1=no"; fi; }
try write_etc "touch /etc/localaid/probe"
try write_old_venv "touch $OLD/probe"
try read_data "ls $DATA"
try read_root "ls /root"
try read_shadow "cat /etc/shadow"
try write_venv "touch $NEW/probe"
try write_cache "touch $CACHE/probe"
try hard_link "ln $CACHE/probe $NEW/probe-link"
echo "index_sha256=$(printf %s "$INDEX" | sha256sum | cut -d' ' -f1)"
echo "other_users_processes=$(ps -eo uid= | grep -vc "^ *$(id -u)\$")"
sleep 4  # while root looks at every command line
"""

INDEX = "https://u:s3cr3t@index.example/simple"
RUN_PROBE = r"""
import os, sys
from localaid.config import load
from localaid.provision import safefs, webui
from localaid.provision.webui import venv
ctx = webui.Ctx(load("/etc/localaid/localaid.yaml", "/etc/localaid/conf.d"))
lay, (uid, gid) = ctx.layout, ctx.host.ids("open-webui")
new = lay.venv("9.9.9")
safefs.ensure_dir(new, 0o755, uid, gid)
env = {"OLD": lay.venv("0.12.4"), "NEW": new, "CACHE": lay.uv_cache, "DATA": ctx.data_dir(),
       "INDEX": sys.stdin.read().strip(), "PATH": "/usr/bin:/bin"}  # the secret: on no command line
r = ctx.host.sandboxed(["sh", "-c", sys.argv[1]], venv.venv_jail(ctx, "9.9.9"), env, 60)
safefs.remove_tree(new)
print("rc=%d" % r.rc)
print("\n".join(r.tail))
"""


def test_installer_code_runs_confined_as_the_service_user(container):
    """The very sandbox a build step gets (venv.venv_jail, Host.sandboxed) running a probe."""
    c = container
    serving_old(c)
    result: dict = {}
    probe = threading.Thread(target=lambda: result.update(out=c.run(["python3", "-c", RUN_PROBE, PROBE],
                                                                    input=INDEX, timeout=120).stdout))
    probe.start()
    seen = wait_for(lambda: [ln for ln in c.run(["ps", "-eo", "user:20,args"]).stdout.splitlines()
                             if ln.split(None, 1)[-1].startswith("sleep 4")],
                    timeout=60, interval=0.1, message="the probe running")
    everything = c.run(["ps", "-eo", "args"]).stdout  # as root: every process, systemd-run's too
    probe.join()
    out = result["out"]
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    print("\n" + out)
    assert seen[0].split()[0] == "open-webui"
    assert "localaid-webui-build-venv-9.9.9" in everything and "s3cr3t" not in everything
    assert got["rc"] == "0"
    assert got["user"] == "open-webui"
    assert int(got["CapEff"], 16) == 0 and int(got["CapBnd"], 16) == 0 and got["NoNewPrivs"] == "1"
    assert got["write_etc"] == got["write_old_venv"] == "no"  # read-only: the system, the serving venv
    assert got["read_data"] == got["read_root"] == got["read_shadow"] == "no"  # out of sight
    assert got["write_venv"] == got["write_cache"] == "yes"
    assert got["hard_link"] == "yes"  # one mount: uv links from its cache instead of copying 7 GB
    assert got["index_sha256"] == hashlib.sha256(INDEX.encode()).hexdigest()  # it got the secret
    assert got["other_users_processes"] == "0"  # ProtectProc=invisible
    assert not c.exists("/etc/localaid/probe") and not c.exists(f"{BASE}/venvs/0.12.4/probe")
    # and the set-up job built 0.12.4 that way: in its unit, as the service user
    assert "localaid-webui-build-venv-0.12.4.service" in c.journal("localaid-webui-build-venv-0.12.4.service")
    assert c.run(["stat", "-c", "%U", f"{BASE}/venvs/0.12.4/{SITE}/open_webui/__init__.py"]).stdout.strip() == \
        "open-webui"


def test_the_set_up_unit_is_narrowed(container):
    c = container
    out = c.run(["systemd-analyze", "security", "--no-pager", "localaid-webui-setup.service"], check=False).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"\nlocalaid-webui-setup.service exposure: {score}")
    assert score <= 3.0, out
    caps = c.unit_property("localaid-webui-setup.service", "CapabilityBoundingSet").split()
    assert "cap_setuid" not in caps and "cap_setgid" not in caps and "cap_chown" in caps
    writable = c.unit_property("localaid-webui-setup.service", "ReadWritePaths").split()
    assert "/etc" not in writable and "/var" not in writable, writable
    # the package made the user (and its home, the default data dir) before the job ran
    pw = c.run(["getent", "passwd", "open-webui"]).stdout.strip().split(":")
    assert pw[5] == DATA and int(pw[2]) < 1000 and pw[6] in ("/usr/sbin/nologin", "/bin/false")


# ------------------------------------------------------------------------- planted links
DATA_LINKS = {  # name in the data dir → where it points (root's files; the last does not exist)
    "webui.db": "/etc/shadow",
    "webui.db-wal": "/etc/passwd",
    "webui.db-shm": "/root/.bashrc",
    "webui.db-journal": "/etc/localaid/webui-admin-password",
    ".webui.db.localaid-tmp": "/etc/localaid/open-webui.env",
    ".webui.db-wal.localaid-tmp": "/etc/planted-by-open-webui",
}


def plant(c, links: dict[str, str], where: str) -> None:
    script = " && ".join(f"ln -sfn {target} {where}/{name}" for name, target in links.items())
    c.run(["sh", "-c", script], user="open-webui")


def test_links_planted_by_the_service_user_redirect_nothing(container):
    c = container
    before_db = serving_old(c)
    # links in the serving venv too: root walks it (the size of a venv, in preflight)
    plant(c, {"evil-root": "/root", "evil-etc": "/etc"}, f"{BASE}/venvs/0.12.4/{SITE}")
    before = snapshot(c, "/etc", "/root")
    n_files = sum(1 for v in before.values() if v.startswith("-"))
    set_faults(c, "slow-bind@0.12.5=6 fail-migration@0.12.5")
    background_upgrade(c, "attack-upgrade", "0.12.5")
    # while the new venv is built (by the service user, in its directory): a link at the marker,
    # at the marker's temporary name, and a directory link inside site-packages
    new = f"{BASE}/venvs/0.12.5"
    wait_for(lambda: c.exists(f"{new}/{SITE}"), timeout=60, interval=0.05, message="the new venv")
    plant(c, {".localaid-complete": "/etc/shadow", "..localaid-complete.localaid-tmp": "/root/.profile"}, new)
    plant(c, {"evil-dir": "/etc"}, f"{new}/{SITE}")
    # after the backup, while 0.12.5 starts (it sleeps 6 s before it opens the database): a link
    # at every name root writes or removes in the data dir during the rollback
    wait_for(lambda: journal_step(c) == "start", timeout=120, interval=0.05, message="the start step")
    plant(c, DATA_LINKS, DATA)
    finished(c, "attack-upgrade")
    p = progress(c)
    assert p["state"] == "failed" and "rolled back to 0.12.4, database restored" in p["text"], p
    assert wait_for(lambda: up(c, "0.12.4"), timeout=30)
    after = snapshot(c, "/etc", "/root")
    marker = c.run(["stat", "-c", "%F %U", f"{new}/.localaid-complete"]).stdout.strip()
    print(f"\n{n_files} files (and {len(before) - n_files} other entries) under /etc and /root checksummed: "
          f"{len(changes(before, after))} changed; the venv's marker: {marker} (a link planted before root "
          f"wrote it becomes root's regular file; planted after, it stays the attacker's link)")
    assert changes(before, after) == []
    assert not c.exists("/etc/planted-by-open-webui")
    assert db_sha(c) == before_db  # byte for byte
    assert stat(c, f"{DATA}/webui.db") == "600 open-webui open-webui"
    assert c.run(["stat", "-c", "%F", f"{DATA}/webui.db"]).stdout.strip() == "regular file"
    for name in ("webui.db-wal", "webui.db-shm", "webui.db-journal"):  # removed, not followed
        assert c.run(["test", "-L", f"{DATA}/{name}"], check=False).returncode != 0, name
    assert marker in ("regular file root", "symbolic link open-webui")
    assert c.run(["readlink", f"{new}/{SITE}/evil-dir"]).stdout.strip() == "/etc"  # left alone

    # the next build of 0.12.5 clears the half-trusted venv first (a tree holding links): a
    # marker that is a link makes it incomplete
    clear_faults(c)
    plant(c, {".localaid-complete": "/etc/shadow"}, new)
    r = localaid(c, "upgrade", "webui", "--version", "0.12.5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert up(c, "0.12.5")
    assert changes(before, snapshot(c, "/etc", "/root")) == []
    assert c.run(["stat", "-c", "%F %U", f"{new}/.localaid-complete"]).stdout.strip() == "regular file root"
    assert not c.exists(f"{new}/{SITE}/evil-dir")  # removed with the old tree, as a link


# ------------------------------------------------------------------ failures, never worse
def test_a_full_disk_during_the_backup_leaves_the_old_version_serving(container):
    """A 64 KiB file system over the backups (the rollback's copy of webui.db); the database
    outgrows it after the preflight (which counted it), while the new venv is built. The backup
    of all the data, taken online before the stop into backup.dir, has room: the copy made during
    the outage is what fails."""
    c = container
    serving_old(c)
    c.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", f"{BASE}/backups"])
    try:
        background_upgrade(c, "full-upgrade", "0.12.5")
        # past the preflight (which counted the database as it was): the venv is being made
        wait_for(lambda: journal_step(c) == "build" and "creating the venv" in (progress(c) or {}).get("text", ""),
                 timeout=60, interval=0.05, message="the build step, past its preflight")
        c.run(["sqlite3", f"{DATA}/webui.db", "CREATE TABLE pad (x); INSERT INTO pad VALUES (randomblob(300000));"],
              user="open-webui")
        grown = db_sha(c)
        finished(c, "full-upgrade")
        p = progress(c)
        print(f"\n{p['text']}")
        assert p["state"] == "failed"
        assert "cannot back up webui.db" in p["text"] and "No space left on device" in p["text"], p
        assert "rolled back to 0.12.4, database untouched" in p["text"], p
        assert up(c, "0.12.4") and db_sha(c) == grown
        assert c.run(["ls", "-A", f"{BASE}/backups"]).stdout.strip() == ""  # nothing half-written left
        assert c.run(["readlink", f"{BASE}/current"]).stdout.strip() == "venvs/0.12.4"
        assert "error: Open WebUI 0.12.5 failed at backup" in c.journal("full-upgrade")  # what the CLI said
    finally:
        c.run(["umount", f"{BASE}/backups"], check=False)


def test_purge_keeps_the_backups_and_the_key_and_says_where(container, deb):
    c = container
    serving_old(c)
    assert localaid(c, "upgrade", "webui", "--version", "0.12.5").returncode == 0  # a backup now exists
    config = CONFIG.replace('version: "0.12.4"', 'version: "0.12.5"')  # its database is 0.12.5's now
    backups = c.run(["sh", "-c", f"ls {BASE}/backups/*.db"]).stdout.split()
    assert backups
    kept = {p: hashlib.sha256(c.read_bytes(p)).hexdigest() for p in backups + [f"{BASE}/secret-key"]}
    data = db_sha(c)
    r = c.run(["apt-get", "purge", "-y", "-q", "localaid"], timeout=300)
    said = r.stdout + r.stderr
    print("\n" + "\n".join(line for line in said.splitlines() if line.startswith("localaid:")))
    assert f"{BASE}/backups/" in said and f"{BASE}/secret-key" in said
    assert f"{len(backups)} backup(s)" in said
    for path, sha in kept.items():
        assert hashlib.sha256(c.read_bytes(path)).hexdigest() == sha, path
    assert not c.exists("/etc/localaid") and not c.exists(f"{BASE}/venvs") and not c.exists(f"{BASE}/current")
    assert c.run(["ls", "-A", "/var/lib/localaid"]).stdout.split() == ["backups", "webui"]  # the upgrade's backup
    assert "backup(s) of Open WebUI's data (localaid restore puts one back after a new install): " \
        "/var/lib/localaid/backups/" in said
    assert db_sha(c) == data  # the data dir is the user's
    # installed again, Open WebUI comes back with the same key (sessions and stored secrets hold)
    key = c.read(f"{BASE}/secret-key").strip()
    install_deb(c, deb, config=config)
    c.systemctl("start", "localaid-webui-setup.service", timeout=300)
    wait_for(lambda: up(c, "0.12.5"), timeout=60, message="Open WebUI back after the reinstall")
    assert f"WEBUI_SECRET_KEY={key}" in c.read("/etc/localaid/open-webui.env")
    assert db_sha(c) == data


def test_without_its_user_the_set_up_unit_says_why(container):
    """The package makes user open-webui; should it be gone, the job's useradd cannot work in a
    unit whose /etc is read-only, and the failure says so (and what to do)."""
    c = container
    c.systemctl("stop", "localaid.service")  # no retries of its own meanwhile
    c.systemctl("stop", "open-webui.service")
    c.run(["userdel", "open-webui"])
    try:
        r = c.systemctl("start", "localaid-webui-setup.service", check=False, timeout=300)
        assert r.returncode != 0
        p = progress(c)
        print(f"\n{p['text']}")
        assert p["state"] == "failed" and "/etc is read-only" in p["text"] and "reinstall" in p["text"], p
        assert c.run(["getent", "passwd", "open-webui"], check=False).returncode != 0
    finally:
        opts = f"--system --home-dir {DATA} --no-create-home --shell /usr/sbin/nologin"
        c.run(["sh", "-c", f"getent passwd open-webui || {{ getent group open-webui && useradd {opts} --gid "
                           f"open-webui open-webui || useradd {opts} --user-group open-webui; }}"], check=False)
        c.systemctl("start", "localaid.service", check=False)


# --------------------------------------------------------------------------------- Ollama
OLLAMA_MODELS = "/usr/share/ollama/models"  # inside ollama's home: the user can swap it
OLLAMA_CONFIG = """\
ollama:
  install_script: {url}
  port: {port}
  version: "0.9.0"
  install_timeout: 30s
  models_dir: {models}
webui:
  enabled: false
gpu:
  devices:
    mode: "off"
  watch: false
"""


@pytest.fixture(scope="module")
def ollama_site(tmp_path_factory):
    s = fake_site.FakeOllamaSite(tmp_path_factory.mktemp("ollama-site"), slow_seconds=20).start()
    yield s
    s.stop()


def test_ollama_models_dir_swapped_for_a_link_to_etc_is_refused(make_container, ollama_site):
    config = OLLAMA_CONFIG.format(url=ollama_site.script_url, port=free_port(), models=OLLAMA_MODELS)
    c = make_container(install=True, config=config, setup=trust_ca(ollama_site), name="ollama-link")
    rc, state = run_setup(c)
    assert rc == 0 and state["state"] == "done", state
    assert c.run(["stat", "-c", "%U", OLLAMA_MODELS]).stdout.strip() == "ollama"
    # user ollama owns its home: it swaps the models directory for a link to /etc
    c.run(["sh", "-c", f"mv {OLLAMA_MODELS} {OLLAMA_MODELS}.away && ln -s /etc {OLLAMA_MODELS}"], user="ollama")
    before = snapshot(c, "/etc")
    n_files = sum(1 for v in before.values() if v.startswith("-"))
    rc, state = run_setup(c)  # the set-up unit, as localaid.service starts it
    assert rc != 0 and state["state"] == "failed", state
    assert f"ollama.models_dir {OLLAMA_MODELS} is a symbolic link" in state["text"], state
    r = c.run(["localaid", "provision", "ollama"], check=False)  # and by hand
    assert r.returncode == 1
    time.sleep(1)
    after = snapshot(c, "/etc")
    print(f"\n{n_files} files (and {len(before) - n_files} other entries) under /etc checksummed: "
          f"{len(changes(before, after))} changed")
    assert changes(before, after) == []
    assert c.run(["stat", "-c", "%U:%G", "/etc"]).stdout.strip() == "root:root"
