"""Install-script download and checks, drop-in rendering, snapshot/restore, running the script.

No root and no network: the download tests use the fake HTTPS site (tests/fakes/ollama/server.py)
on 127.0.0.1 with its test CA (needs the openssl and zstd commands).
"""

from __future__ import annotations

import io
import os
import ssl
import sys
import time
from pathlib import Path

import pytest

from localaid import log
from localaid.config import FrozenMap, OllamaConfig
from localaid.provision import ollama as prov
from localaid.provision.job import JobError, Reporter
from localaid.provision.ollama import script, service

FAKES = Path(__file__).resolve().parents[1] / "fakes" / "ollama"
sys.path.insert(0, str(FAKES))

import server as fake_site  # noqa: E402

GOOD = b"#!/bin/sh\nmain() {\n    set -eu\n" + b"    echo installing\n" * 40 + b"}\n\nmain\n"


@pytest.fixture(autouse=True)
def quiet_log(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(log, "stream", buf)
    return buf


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = fake_site.FakeOllamaSite(tmp_path_factory.mktemp("site"), slow_seconds=5).start()
    yield s
    s.stop()


@pytest.fixture
def trust(site, monkeypatch):
    monkeypatch.setattr(script, "_ssl_context", lambda: ssl.create_default_context(cafile=str(site.certs["ca_crt"])))
    site.mode.update(script="ok", archive="ok")
    yield
    site.mode.update(script="ok", archive="ok")


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def reporter():
    return Reporter(None, terminal=False)


# --------------------------------------------------------------------------------- validation
def test_valid_script_passes_and_sha_pin_is_checked():
    prov.validate_script(GOOD, None, "x")
    import hashlib
    prov.validate_script(GOOD, hashlib.sha256(GOOD).hexdigest().upper(), "x")
    with pytest.raises(prov.ScriptError, match="has sha256 .* but ollama.install_script_sha256 is 0000"):
        prov.validate_script(GOOD, "0" * 64, "x")


@pytest.mark.parametrize("data,words", [
    (b"<!DOCTYPE html><html><body>502</body></html>" * 20, "is an HTML page"),
    (b"\n  <html>\n<head>" + b"x" * 600, "is an HTML page"),
    (b"echo hi\n" * 100, "does not start with #!"),
    (b"#!/bin/sh\nmain\n", "only 15 bytes"),
    (b"#!/bin/sh\n" + b"\0" * 300, "NUL bytes"),
    (GOOD[: len(GOOD) - 10], "not a complete shell script"),
])
def test_bad_scripts_are_refused(data, words):
    with pytest.raises(prov.ScriptError, match=words):
        prov.validate_script(data, None, "https://example.invalid/install.sh")


def test_the_fake_installer_is_valid_and_its_truncation_is_not(site):
    script = site.script()
    prov.validate_script(script, None, "fake")
    with pytest.raises(prov.ScriptError, match="truncated download"):
        prov.validate_script(script[: len(script) // 2], None, "fake")


# ----------------------------------------------------------------------------------- download
def cfg(**kw) -> OllamaConfig:
    return OllamaConfig(**kw)


def test_download_over_https(site, trust):
    data = prov.obtain_script(cfg(install_script=site.script_url), reporter(), budget=10)
    assert data == site.script()


def test_untrusted_certificate_is_an_error(site):
    site.mode.update(script="ok")
    with pytest.raises(JobError, match="cannot connect to 127.0.0.1:.*CERTIFICATE_VERIFY_FAILED"):
        prov.download(site.script_url, False, 5)


def test_404_is_retried_with_clear_messages_then_given_up(site, trust):
    site.mode["script"] = "404"
    fc = FakeClock()
    rep = Reporter(None, terminal=False)
    with pytest.raises(prov.ScriptError) as e:
        prov.obtain_script(cfg(install_script=site.script_url), rep, budget=60, sleep=fc.sleep, clock=fc.clock)
    assert str(e.value) == (f"install script download failed: HTTP 404 from {site.script_url}; "
                            "gave up after 5 attempts")
    assert fc.sleeps == [2, 5, 15, 30]
    out = log.stream.getvalue()
    assert f"<4>install script download failed: HTTP 404 from {site.script_url}, retrying in 30 s" in out


def test_recovers_when_the_site_comes_back(site, trust):
    site.mode["script"] = "html"
    fc = FakeClock()

    def sleep(s):
        fc.sleep(s)
        site.mode["script"] = "ok"

    data = prov.obtain_script(cfg(install_script=site.script_url), reporter(), 60, sleep=sleep, clock=fc.clock)
    assert data.startswith(b"#!/bin/sh") and fc.sleeps == [2]
    assert "is an HTML page, not a shell script" in log.stream.getvalue()


def test_truncated_and_slow_downloads(site, trust):
    site.mode["script"] = "truncated"
    with pytest.raises(JobError, match="closed early"):
        prov.download(site.script_url, False, 5)
    site.mode["script"] = "slow"
    t0 = time.monotonic()
    with pytest.raises(JobError, match=r"no answer from https://127.0.0.1:\d+/install.sh within 1 s"):
        prov.download(site.script_url, False, 1)
    assert time.monotonic() - t0 < 4


def test_plain_http_is_refused_without_retrying():
    fc = FakeClock()
    with pytest.raises(prov.RefusedError, match="refusing plain http://"):
        prov.obtain_script(cfg(install_script="http://127.0.0.1:9/install.sh"), reporter(), 60,
                           sleep=fc.sleep, clock=fc.clock)
    assert fc.sleeps == []


def test_local_script_for_air_gapped_hosts(tmp_path):
    path = tmp_path / "install.sh"
    path.write_bytes(GOOD)
    assert prov.obtain_script(cfg(install_script=str(path)), reporter(), 10) == GOOD
    with pytest.raises(prov.ScriptError, match="No such file"):
        prov.obtain_script(cfg(install_script=str(tmp_path / "missing.sh")), reporter(), 10)


# ------------------------------------------------------------------------------------ drop-in
def test_dropin_defaults():
    text = prov.render_dropin(cfg())
    assert 'Environment="OLLAMA_HOST=127.0.0.1:11434"' in text
    assert "OLLAMA_MODELS" not in text and "OLLAMA_KEEP_ALIVE" not in text
    assert "After=localaid-devices.service" in text and "Wants=localaid-devices.service" in text
    assert "ReadWritePaths=-/usr/share/ollama/.ollama/models" in text
    assert "ProtectHome=yes" in text and "DevicePolicy=closed" in text
    for group in ("char-nvidiactl", "char-nvidia-frontend", "char-nvidia", "char-nvidia-uvm", "char-nvidia-caps",
                  "char-nvidia-modeset"):
        assert f"DeviceAllow={group} rw" in text
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert not keys & {"User", "Group", "ExecStart", "Restart"}  # the script's unit keeps those


def test_allow_from_becomes_the_units_firewall():
    assert "IPAddress" not in prov.render_dropin(cfg())  # loopback only: nothing to filter
    text = prov.render_dropin(cfg(host="0.0.0.0", allow_from=("10.0.0.0/24", "192.168.1.7")))
    assert "IPAddressAllow=localhost 10.0.0.0/24 192.168.1.7\nIPAddressDeny=any\n" in text
    assert text.endswith("\n") and 'Environment="OLLAMA_HOST=0.0.0.0:11434"' in text


@pytest.mark.parametrize("said, verdict", [("EPERM", True), ("TIMEOUT", True), ("ECONNREFUSED", False),
                                           ("connected", False),
                                           ("Failed to start transient service unit", None)])
def test_the_firewall_probe_believes_only_a_dropped_packet(said, verdict):
    from localaid.provision.host import Result
    from localaid.provision.ollama import firewall

    class H:
        argv = None

        def run(self, argv, timeout):
            H.argv = argv
            return Result(0 if verdict is not None else 1, (said,))
    enforced, words = firewall.probe(H())
    assert enforced is verdict, words
    assert "--property=IPAddressDeny=any" in H.argv and "--property=DynamicUser=yes" in H.argv
    assert not any(a.startswith("--property=IPAddressAllow") for a in H.argv)  # loopback denied too


def test_dropin_settings_and_quoting():
    c = cfg(host="::1", port=11500, models_dir="/home/ai/models", keep_alive="forever", num_parallel=4,
            max_loaded_models=2, context_length=8192,
            environment=FrozenMap({"OLLAMA_ORIGINS": 'http://a,"b"', "CUDA_VISIBLE_DEVICES": "0", "X": "100%"}))
    text = prov.render_dropin(c, ("/dev/nvidia0", "/dev/nvidiactl"))
    for line in ('Environment="OLLAMA_HOST=[::1]:11500"', 'Environment="OLLAMA_MODELS=/home/ai/models"',
                 'Environment="OLLAMA_KEEP_ALIVE=-1"', 'Environment="OLLAMA_NUM_PARALLEL=4"',
                 'Environment="OLLAMA_MAX_LOADED_MODELS=2"', 'Environment="OLLAMA_CONTEXT_LENGTH=8192"',
                 "EnvironmentFile=-/etc/systemd/system/ollama.service.d/50-localaid.env",
                 "ReadWritePaths=-/home/ai/models", "ProtectHome=read-only",
                 "DeviceAllow=/dev/nvidia0 rw", "DeviceAllow=/dev/nvidiactl rw"):
        assert line in text.splitlines(), line
    # ollama.environment (it may hold tokens) is in the 0600 environment file, not the drop-in.
    assert "OLLAMA_ORIGINS" not in text and "CUDA_VISIBLE_DEVICES" not in text
    env = prov.render_env_file(c).splitlines()
    for line in ('OLLAMA_ORIGINS="http://a,\\"b\\""', 'CUDA_VISIBLE_DEVICES="0"', 'X="100%"'):
        assert line in env, line
    assert prov.environment(cfg(keep_alive="30m"))["OLLAMA_KEEP_ALIVE"] == "30m"
    assert prov.environment(c)["X"] == "100%"


def test_dropin_refuses_line_breaks():
    with pytest.raises(JobError, match="line break"):
        prov.render_env_file(cfg(environment=FrozenMap({"A": "x\ny"})))
    with pytest.raises(JobError, match="line break"):
        prov.render_dropin(cfg(models_dir="/srv/a\nb"))


def test_nvidia_nodes(tmp_path):
    for n in ("nvidiactl", "nvidia0", "nvidia1", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "null",
              "nvidia-foo"):
        (tmp_path / n).touch()
    (tmp_path / "nvidia-caps").mkdir()
    (tmp_path / "nvidia-caps" / "nvidia-cap1").touch()
    names = [os.path.relpath(p, tmp_path) for p in prov.nvidia_nodes(str(tmp_path))]
    assert names == ["nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1", "nvidiactl",
                     "nvidia-caps/nvidia-cap1"]


# ------------------------------------------------------------------------------ version parsing
@pytest.mark.parametrize("text,version", [
    ("ollama version is 0.9.0\n", "0.9.0"),
    ("Warning: could not connect to a running Ollama instance\nWarning: client version is 0.9.1\n", "0.9.1"),
    ("ollama version is 0.9.0\nWarning: client version is 0.9.1\n", "0.9.1"),  # old server still running
    ("ollama version is 0.12.0-rc1\n", "0.12.0-rc1"),
    ("bash: ollama: command not found", None),
])
def test_parse_version_output(text, version):
    assert prov.parse_version_output(text) == version


def test_installed_version_of_the_fake_binary(tmp_path):
    import release
    binary = tmp_path / "ollama"
    binary.write_bytes(release.fake_binary("0.9.1"))
    binary.chmod(0o755)
    assert prov.installed_version(str(binary)) == "0.9.1"
    assert prov.installed_version(str(tmp_path / "absent")) is None


# ------------------------------------------------------------------------------------ snapshot
def test_snapshot_restores_what_a_failed_script_broke(tmp_path):
    binary, lib = tmp_path / "bin" / "ollama", tmp_path / "lib" / "ollama"
    binary.parent.mkdir()
    (lib / "cuda_v12").mkdir(parents=True)
    binary.write_text("old binary")
    (lib / "libggml.so").write_text("old lib")
    (lib / "cuda_v12" / "libcuda.so").write_text("old cuda")
    os.symlink("libggml.so", lib / "libggml.so.1")
    snap = prov.Snapshot(str(tmp_path / "backup"), str(binary), str(lib))
    assert snap.take()
    assert os.stat(tmp_path / "backup" / "ollama").st_ino == os.stat(binary).st_ino  # hard links, no copy
    # What the install script does: remove the libraries, unpack new files (tar unlinks first).
    import shutil
    shutil.rmtree(lib)
    binary.unlink()
    binary.write_text("half-written new bin")
    snap.restore()
    assert binary.read_text() == "old binary"
    assert (lib / "cuda_v12" / "libcuda.so").read_text() == "old cuda"
    assert os.readlink(lib / "libggml.so.1") == "libggml.so"
    assert not (tmp_path / "backup").exists()


def test_snapshot_of_nothing(tmp_path):
    snap = prov.Snapshot(str(tmp_path / "b"), str(tmp_path / "none"), str(tmp_path / "lib"))
    assert not snap.take()
    snap.restore()  # nothing to do
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------ running a script
def test_run_script_streams_lines_and_keeps_the_last(quiet_log):
    script = b"#!/bin/sh\necho \">>> Installing ollama to /usr/local\"\necho \"\033[1;31mERROR:\033[0m bad\" >&2\n" \
             b"[ \"$OLLAMA_VERSION\" = 0.9.1 ] && echo pinned\nexit 3\n"
    rep = reporter()
    rc, why = prov.run_script(script, "0.9.1", 30, rep)
    assert (rc, why) == (3, "install script exited with status 3")
    assert list(rep.tail) == [">>> Installing ollama to /usr/local", "ERROR: bad", "pinned"]
    assert "<6>installer: >>> Installing ollama to /usr/local\n" in quiet_log.getvalue()


def test_run_script_timeout_stops_the_whole_group(tmp_path):
    marker = tmp_path / "child.pid"
    script = f"#!/bin/sh\n(sleep 60; echo late) &\necho $! > {marker}\necho started\nsleep 60\n".encode()
    t0 = time.monotonic()
    rc, why = prov.run_script(script, None, 1.0, reporter())
    assert time.monotonic() - t0 < 10
    assert rc != 0 and why == "install script did not finish within 1 s and was stopped"
    child = int(marker.read_text())
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the installer's child process survived the timeout")


def test_preflight_reports_missing_tools(monkeypatch):
    monkeypatch.setattr(service, "_which", lambda t: None if t == "zstd" else "/usr/bin/" + t)
    problems = prov.preflight(None)
    assert problems == ["missing tools: zstd (apt install zstd)"]
