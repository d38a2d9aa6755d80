"""WEBUI_ADMIN_PASSWORD leaves Open WebUI's environment file once the admin exists, and no later
run puts it back or restarts anything for it; a database without accounts gets it back."""

from __future__ import annotations

import os

import pytest

from localaid import paths
from localaid.provision import webui
from test_webui_upgrade import FakeHost, config, provision

PASSWORD_LINE = "WEBUI_ADMIN_PASSWORD="


class AdminHost(FakeHost):
    """Open WebUI's behaviour: at start, with no account, the environment's admin is created."""

    def __init__(self, layout):
        super().__init__(layout)
        self.users = 0
        self.started_with_password: list[bool] = []

    def start(self, unit):
        super().start(unit)
        if unit != webui.UNIT:
            return
        with open(self.layout.env_file) as f:
            has = PASSWORD_LINE in f.read()
        self.started_with_password.append(has)
        if has and self.users == 0:
            self.users = 1

    def get(self, url, timeout=2.0):
        if self.active and url.endswith("/api/config"):
            return 200, ({"onboarding": True} if self.users == 0 else {"version": self.serving})
        return super().get(url, timeout)


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROGRESS_DIR", str(tmp_path / "run/localaid/progress"))
    layout = webui.Layout(root=str(tmp_path), state_dir="/var/lib/localaid", run_dir="/run/localaid")
    return layout, AdminHost(layout)


def env_text(layout) -> str:
    with open(layout.env_file) as f:
        return f.read()


def test_password_leaves_the_env_file_once_the_admin_exists(world):
    layout, host = world
    assert provision(layout, host, config()) == 0
    assert host.users == 1 and host.started_with_password == [True]
    assert PASSWORD_LINE not in env_text(layout)
    assert oct(os.stat(layout.env_file).st_mode & 0o777) == "0o600"
    assert os.path.exists(layout.admin_marker)
    pw_file = layout.p(config().webui.admin.password_file)
    assert open(pw_file).read().strip()  # the admin's password stays where the admin reads it
    # the next runs change nothing and restart nothing
    text = env_text(layout)
    host.calls.clear()
    assert provision(layout, host, config()) == 0
    assert env_text(layout) == text and not [c for c in host.calls if c[0] in ("start", "stop", "run")]
    # a configuration change restarts the service without the password: nothing recreated
    assert provision(layout, host, config(port=3999)) == 0
    assert host.started_with_password == [True, False] and host.users == 1
    assert PASSWORD_LINE not in env_text(layout)


def test_an_upgrade_starts_without_the_password(world):
    layout, host = world
    assert provision(layout, host, config()) == 0
    assert provision(layout, host, config("0.12.5")) == 0
    assert host.serving == "0.12.5" and host.started_with_password == [True, False]
    assert PASSWORD_LINE not in env_text(layout)


def test_a_database_without_accounts_gets_the_admin_again(world):
    layout, host = world
    assert provision(layout, host, config()) == 0
    host.users = 0  # webui.db removed by hand, Open WebUI restarted
    assert provision(layout, host, config()) == 0
    assert host.users == 1 and host.started_with_password == [True, True]
    assert PASSWORD_LINE not in env_text(layout) and os.path.exists(layout.admin_marker)


def test_unknown_admin_state_keeps_the_password(world):
    """An Open WebUI that does not answer /api/config: nothing is assumed."""
    layout, host = world
    host.get = lambda url, timeout=2.0: FakeHost.get(host, url, timeout)
    assert provision(layout, host, config()) == 0
    assert PASSWORD_LINE in env_text(layout) and not os.path.exists(layout.admin_marker)
