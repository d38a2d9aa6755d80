"""From `apt install` to a chat model with no edits: ollama.models: auto, in booted Debian 12
containers with the built .deb installed by apt.

The configuration is the shipped /etc/localaid/localaid.yaml, untouched; a conf.d file says
only where the doubles are (Ollama installed already, as its install script leaves it; the fake
open-webui's wheels). Without a GPU the CPU tier is picked, with the fake NVML reporting 12 and 24
GiB the tiers for those cards; the pick is pulled with its progress in STATUS, becomes Open
WebUI's default model, and survives a reboot and a package upgrade unchanged. `models: []` pulls
the embedding model only.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import install_deb
from gpu_box import GIB, api, loaded, make_gpu_box, on_gpu
from harness import install_fake_ollama, wait_for
from localaid.catalog import Inputs, Machine, choose

CHOICE = "/var/lib/localaid/model-choice.json"
PULL_RATE = 100_000_000  # bytes a second the fake Ollama serves pulls at: the CPU pick (~1 GB) takes ~10 s
DOUBLES = """\
# Where the test doubles are: Ollama is installed already (as its install script leaves it),
# Open WebUI's wheels come from a local wheelhouse.
ollama:
  install_script: /nonexistent/install.sh
webui:
  find_links: [/opt/wheelhouse]
"""


def status(c) -> str:
    return c.unit_property("localaid.service", "StatusText")


def healthy(c) -> bool:
    r = c.run(["localaid", "status", "--json"], check=False)
    return r.returncode == 0 and json.loads(r.stdout)["state"]["healthy"]


def tags(c) -> list[str]:
    return sorted(m["name"] for m in json.loads(api(c, "/api/tags") or '{"models": []}')["models"])


def pick(c) -> dict:
    return json.loads(c.read(CHOICE))


def expected_cpu_pick(c) -> str:
    """What the table says for the container's RAM and cores (those of this host: nspawn shares them)."""
    ram = int(re.search(r"MemTotal:\s+(\d+)", c.read("/proc/meminfo")).group(1)) * 1024
    cores = int(c.run(["nproc"]).stdout)
    return choose(Machine(ram, cores), Inputs()).model


def default_model(c, port=3000) -> str | None:
    """Open WebUI's default model for new chats, asked of its admin API as an admin."""
    password = c.read("/etc/localaid/webui-admin-password").strip()
    signin = json.loads(c.run(["curl", "-sf", "-m", "5", "-H", "Content-Type: application/json", "-d",
                               json.dumps({"email": "admin@localhost", "password": password}),
                               f"http://127.0.0.1:{port}/api/v1/auths/signin"]).stdout)
    r = c.run(["curl", "-sf", "-m", "5", "-H", f"Authorization: Bearer {signin['token']}",
               f"http://127.0.0.1:{port}/api/v1/configs/models"], check=False)
    return json.loads(r.stdout).get("DEFAULT_MODELS") if r.returncode == 0 else None


@pytest.fixture(scope="module")
def cpu_box(rootfs, deb, wheelhouse):
    """The shipped defaults on a machine without a GPU, the pull paced (module-scoped: the tests
    build on each other: install, reboot, upgrade)."""
    from conftest import boot

    def setup(c):
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        install_fake_ollama(c, faults={"pull_rate": PULL_RATE})
    c = boot(rootfs, deb, name="auto-model-cpu", setup=setup, private_network=True,
             binds=[(str(wheelhouse), "/opt/wheelhouse", True)])
    c.t_install = time.monotonic()
    install_deb(c, deb, conf_d={"50-doubles.yaml": DOUBLES})
    yield c
    c.stop()


def test_without_a_gpu_the_cpu_tier_is_picked_pulled_with_progress_and_made_the_default(cpu_box):
    c = cpu_box
    assert c.read("/etc/localaid/localaid.yaml") == c.read("/usr/share/localaid/localaid.yaml")  # as shipped
    want = expected_cpu_pick(c)
    assert want in ("qwen3:0.6b", "qwen3:1.7b", "qwen3:4b")
    # While it downloads, STATUS says what, how far of how much, and how long is left.
    seen = wait_for(lambda: (lambda s: s if re.search(rf"pulling {re.escape(want)} \d+ % of [\d.]+ [MG]B, ~\d+", s)
                             else None)(status(c)), timeout=90, interval=0.2,
                    message=f"STATUS showing the pull of {want} (last: {status(c)!r})")
    print(f"\nSTATUS while pulling: {seen}")
    assert not healthy(c)  # not ready to chat yet
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=120, interval=0.5,
             message=lambda: f"the stack healthy with the pick warm (last: {status(c)!r}, "
                                     f"localaid status: {c.run(['localaid', 'status', '--json'], check=False)})")
    took = time.monotonic() - c.t_install
    p = pick(c)
    assert p["model"] == want and p["basis"].startswith("no GPU, ") and "no usable NVIDIA GPU" in p["reason"]
    assert tags(c) == sorted([f"{want}", "nomic-embed-text:latest"])
    assert [m for m in loaded(c)] == [want]  # the chat model kept warm, the embedding model on demand
    journal = c.journal("localaid.service", output="cat")
    assert re.search(rf"choose-model {re.escape(want)}: ok, recorded in {CHOICE}", journal), journal[-3000:]
    assert p["reason"] in journal  # the pick is logged with its reason
    # Open WebUI's default model for new chats is the pick: no click in its settings.
    wait_for(lambda: default_model(c) == want, timeout=60, message="Open WebUI's default model set")
    out = c.run(["localaid", "status"]).stdout
    assert f"chat model (ollama.models: auto): {want}, picked " in out and "why: no usable NVIDIA GPU" in out
    assert "Open WebUI: http://localhost:3000, sign in as admin@localhost (password: sudo cat " \
           "/etc/localaid/webui-admin-password)" in out
    doctor = c.run(["localaid", "doctor"], check=False).stdout
    assert f"[ok  ] ollama model pick: ollama.models: auto: {want} picked for no GPU" in doctor, doctor
    suggest = c.run(["localaid", "models", "--suggest"]).stdout
    assert suggest.startswith("This machine: no GPU, ") and re.search(rf"^{re.escape(want)} .*← picked$", suggest, re.M)
    print(f"apt install → healthy with {want} warm: {took:.1f} s (pull paced at {PULL_RATE / 1e6:.0f} MB/s)")
    # Backups on the shipped defaults: the daily timer is on; one taken now shows in STATUS and doctor.
    assert c.run(["systemctl", "is-enabled", "localaid-backup.timer"]).stdout.strip() == "enabled"
    assert c.unit_property("localaid-backup.timer", "TimersCalendar").count("OnCalendar=*-*-* 00:00:00") == 1
    r = c.run(["localaid", "backup"], check=False, timeout=300)
    assert r.returncode == 0 and "backup /var/lib/localaid/backups/" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: "backup < 1 h ago" in status(c), timeout=30, message=lambda: f"STATUS naming the backup: {status(c)!r}")
    assert "[ok  ] backups: last good " in c.run(["localaid", "doctor"], check=False).stdout


def test_the_pick_survives_a_reboot_unchanged(cpu_box):
    c = cpu_box
    before = c.read(CHOICE)
    c.reboot()
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=120, interval=0.5,
             message=f"healthy again after the reboot (last: {status(c)!r})")
    assert c.read(CHOICE) == before
    assert "choose-model" not in c.journal("localaid.service", output="cat")  # this boot's journal: no new pick
    assert default_model(c) == pick(c)["model"]


def bumped(deb: Path, tmp: Path) -> Path:
    """The same package as version <version>+1: what a package upgrade installs."""
    unpacked = tmp / "unpacked"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(unpacked)], check=True)
    control = unpacked / "DEBIAN/control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)", text, re.M).group(1)
    control.write_text(text.replace(f"Version: {version}", f"Version: {version}+1"))
    out = tmp / f"localaid_{version}+1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(unpacked), str(out)], check=True,
                   capture_output=True)
    return out


def test_the_pick_survives_a_package_upgrade_unchanged(cpu_box, deb, tmp_path):
    c = cpu_box
    before = c.read(CHOICE)
    new = bumped(deb, tmp_path)
    c.copy_in(new, f"/root/{new.name}")
    c.run(["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confdef", "-o",
           "Dpkg::Options::=--force-confold", f"/root/{new.name}"], timeout=600)
    assert c.run(["dpkg-query", "-W", "-f=${Version}", "localaid"]).stdout.endswith("+1")
    wait_for(lambda: healthy(c) and "1 model warm" in status(c), timeout=120, interval=0.5,
             message=f"healthy after the upgrade (last: {status(c)!r})")
    assert c.read(CHOICE) == before
    assert len(tags(c)) == 2  # nothing else pulled


def test_a_filling_disk_is_said_within_a_cycle(cpu_box):
    """Open WebUI's data dir moved onto a small tmpfs (its size is a limit, no memory is used until
    written): 5 GB free is below the shipped warn_free (10 GB), 1.5 GB below critical_free (2 GB)."""
    c = cpu_box
    data = "/var/lib/open-webui"
    c.systemctl("stop", "open-webui.service")  # stopped by the admin: localaid leaves it alone
    try:
        for size, words, level in (("5g", r"disk low: 5\.\d GB free for Open WebUI's data \(/var/lib/open-webui\)", 1),
                                   ("1500m", r"disk full: 1\.\d GB free for Open WebUI's data \(/var/lib/open-webui\)", 2)):
            c.sh(f"cp -a {data} /root/owui-copy && mount -t tmpfs -o size={size},mode=0700 tmpfs {data} && "
                 f"cp -a /root/owui-copy/. {data}/ && chown open-webui:open-webui {data} && rm -rf /root/owui-copy")
            t0 = time.monotonic()
            said = wait_for(lambda: re.search(words, status(c)), timeout=10, interval=0.1,
                            message=lambda: f"STATUS saying {words!r} (last: {status(c)!r})")
            print(f"\n{said.group(0)}: in STATUS after {time.monotonic() - t0:.1f} s")
            assert time.monotonic() - t0 < 2.5  # within one cycle (1 s) and the state write
            disks = json.loads(c.run(["localaid", "status", "--json"], check=False).stdout)["state"]["disks"]  # exit 1: webui stopped
            assert {"what": "webui", "path": data, "level": level} == \
                {k: v for k, v in disks[-1].items() if k in ("what", "path", "level")}, disks
            # lazily: the mount also shows in the sandboxes' namespaces (localaid.service's), where it is busy
            c.sh(f"cp -a {data} /root/owui-copy && umount -l {data} && rm -rf {data}/* && "
                 f"cp -a /root/owui-copy/. {data}/ && rm -rf /root/owui-copy")
    finally:
        c.run(["sh", "-c", f"mountpoint -q {data} && umount -l {data}"], check=False)
        c.systemctl("start", "open-webui.service")


def test_models_empty_pulls_only_the_embedding_model(make_container, deb, wheelhouse):
    def setup(c):
        c.write("/etc/pip.conf", "[global]\nno-index = true\n")
        install_fake_ollama(c)
    c = make_container(with_deb=True, private_network=True, name="models-empty", setup=setup,
                       binds=[(str(wheelhouse), "/opt/wheelhouse", True)])
    install_deb(c, deb, conf_d={"50-doubles.yaml": DOUBLES.replace("ollama:\n", "ollama:\n  models: []\n", 1)})
    wait_for(lambda: healthy(c) and "nomic-embed-text:latest" in tags(c), timeout=120, interval=0.5,
             message=f"healthy with the embedding model (last: {status(c)!r})")
    time.sleep(2)  # a cycle more: nothing else comes
    assert tags(c) == ["nomic-embed-text:latest"] and loaded(c) == {}
    assert not c.exists(CHOICE) and "model:" not in status(c)
    assert "chat model" not in c.run(["localaid", "status"]).stdout


@pytest.mark.parametrize("vram_gib", [12, 24])
def test_with_a_gpu_the_tier_for_its_memory_is_picked_and_kept_warm_on_it(make_container, nvml_lib, vram_gib):
    """The GPU box (gpu_box.py) has the fake Ollama as a unit of its own, not where the install
    script puts it, so its set-up job cannot pull: the test pulls the pick in its place, and
    localaid keeps it loaded on the GPU."""
    want = choose(Machine(1, 1, "NVIDIA GeForce RTX 4070", vram_gib * GIB), Inputs(embedding=False)).model
    assert want == {12: "qwen3:14b", 24: "qwen3:32b"}[vram_gib]  # the table's tiers for these cards
    c = make_gpu_box(make_container, nvml_lib, models=(), nvml={"memory_total": vram_gib * GIB})
    wait_for(lambda: c.exists(CHOICE), timeout=60, message=f"a pick recorded (last: {status(c)!r})")
    p = pick(c)
    assert p["model"] == want and p["basis"] == f"NVIDIA GeForce RTX 4070, {vram_gib} GiB", p
    assert f"largest that fits the {vram_gib} GiB GPU" in p["reason"]
    c.run(["curl", "-sf", "-m", "30", "-d", json.dumps({"model": want, "stream": False}),
           "http://127.0.0.1:11434/api/pull"])
    wait_for(lambda: on_gpu(c, want) and "1 model warm" in status(c), timeout=120, interval=0.5,
             message=f"{want} loaded whole on the GPU (last: {status(c)!r}, {loaded(c)})")
