"""A real kill at every step of an Open WebUI upgrade, and in the middle of the risky ones.

A child process runs the upgrade and dies with os._exit(137) where the test says: no finally
block, no atexit, nothing flushed by Python (as with SIGKILL). The fake host's state (which
version serves, running or not) goes to a file first: systemd would keep it. The parent then
runs provisioning, as the next start of localaid-webui-setup would, and checks the end state:
the new version serving, or the old one with webui.db byte for byte, no journal, no
maintenance marker.
"""

from __future__ import annotations

import json
import os

import pytest

from localaid import paths
from localaid.provision import webui
from test_webui_upgrade import ORIGINAL_DB, FakeHost, config, db_path, installed, provision, upgrade

NEW_DB = b"SQLite format 3\x00 migrated by 0.12.5"
STEPS = ("build", "stop", "backup", "switch", "start")


class KillHost(FakeHost):
    """FakeHost whose state survives the child, and that can die inside a systemd call."""

    die_after: str | None = None  # "start:<version>": right after that version started (and migrated)
    state_file: str = ""

    def dump(self) -> None:
        with open(self.state_file, "w") as f:
            json.dump({"active": self.active, "serving": self.serving, "enabled": self.enabled,
                       "clock": self.clock}, f)

    def load(self) -> None:
        with open(self.state_file) as f:
            for k, v in json.load(f).items():
                setattr(self, k, v)
        self.die_after = None

    def die(self) -> None:
        self.dump()
        os._exit(137)

    def start(self, unit):
        super().start(unit)
        if unit != webui.UNIT:
            return
        if self.die_after == f"start:{self.serving}":
            self.die()


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "run/localaid/progress"))
    layout = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    host = KillHost(layout)
    host.state_file = str(tmp_path / "host-state.json")
    installed(layout, host, tmp_path)
    return layout, host


def killed(layout, host, at_step: str | None = None) -> None:
    """Run `localaid upgrade webui --version 0.12.5` in a child that dies at `at_step` (before
    the step runs, once the journal records it) or where host.die_after says."""
    pid = os.fork()
    if pid == 0:
        try:
            def hook(step):
                if step == at_step:
                    host.die()
            upgrade(layout, host, config(), "0.12.5", hook)
            host.dump()
        finally:
            os._exit(0)  # reached only when no kill happened: the parent's assertion says so
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 137, "the child was not killed where it should have been"
    host.load()


def assert_end_state(layout, host, rc: int, healthy: bool) -> None:
    assert not os.path.exists(layout.journal) and not os.path.exists(layout.maintenance)
    assert host.active
    if healthy:
        assert rc == 0 and host.serving == "0.12.5" and webui.current_version(layout) == "0.12.5"
        assert open(db_path(layout), "rb").read() == NEW_DB
    else:
        assert rc == 1 and host.serving == "0.12.4" and webui.current_version(layout) == "0.12.4"
        assert open(db_path(layout), "rb").read() == ORIGINAL_DB


@pytest.mark.parametrize("healthy", [True, False], ids=["completes", "rolls-back"])
@pytest.mark.parametrize("step", STEPS)
def test_a_real_kill_before_each_step(world, step, healthy):
    layout, host = world
    if not healthy:
        host.unhealthy.add("0.12.5")
    killed(layout, host, at_step=step)
    assert webui.journal(layout).read()["step"] == step
    assert os.path.exists(layout.maintenance) == (step != "build")  # left with a dead PID
    assert_end_state(layout, host, provision(layout, host, config()), healthy)


def test_a_real_kill_at_the_rollback(world):
    layout, host = world
    host.unhealthy.add("0.12.5")
    killed(layout, host, at_step="rollback")
    j = webui.journal(layout).read()
    assert j["step"] == "rollback" and j["failed_step"] == "start" and j["backup"]
    assert open(db_path(layout), "rb").read() == NEW_DB  # migrated by the version that failed
    assert_end_state(layout, host, provision(layout, host, config()), healthy=False)


@pytest.mark.parametrize("healthy", [True, False], ids=["completes", "rolls-back"])
def test_a_real_kill_while_the_new_version_starts(world, healthy):
    """Killed after 0.12.5 started and migrated the database, before it answered."""
    layout, host = world
    if not healthy:
        host.unhealthy.add("0.12.5")
    host.die_after = "start:0.12.5"
    killed(layout, host)
    assert webui.journal(layout).read()["step"] == "start"
    assert open(db_path(layout), "rb").read() == NEW_DB
    assert_end_state(layout, host, provision(layout, host, config()), healthy)


def test_a_real_kill_in_the_middle_of_the_rollback(world):
    """Killed after the rollback restored the database and started 0.12.4 again."""
    layout, host = world
    host.unhealthy.add("0.12.5")
    host.die_after = "start:0.12.4"
    killed(layout, host)
    assert webui.journal(layout).read()["step"] == "rollback"
    assert_end_state(layout, host, provision(layout, host, config()), healthy=False)
