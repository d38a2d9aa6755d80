"""The real D-Bus adapter (Systemd, Subscription) and UnitWatch against a stand-in systemd on a
peer-to-peer D-Bus socket, as localaid talks to systemd's private socket: which signals make a
unit be read again, how many calls an idle cycle costs (none), and what a re-exec does."""

import io
import time

import pytest

from fake_systemd_bus import FakeSystemdBus
from localaid import log
from localaid.adapters.systemd import Systemd, unit_object_path
from localaid.observe import UnitWatch

WATCHED = ["ollama.service", "localaid-ollama-setup.service", "open-webui.service"]


@pytest.fixture
def bus(tmp_path):
    b = FakeSystemdBus(tmp_path / "private")
    b.set("ollama.service", active="active", sub="running", MainPID=42, ActiveEnterTimestampMonotonic=5_000_000,
          ControlGroup="/system.slice/ollama.service", signal=False)
    b.set("localaid-ollama-setup.service", signal=False)
    yield b
    b.close()


@pytest.fixture
def watch(bus, monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    sd = Systemd(timeout=2, address=bus.address)
    w = UnitWatch(sd, WATCHED, services=["ollama.service", "open-webui.service"])
    yield w
    w.close()


def settle(w: UnitWatch, bus: FakeSystemdBus) -> None:
    """Wait until the signals emitted so far have reached the watch's queue: the reply to a call
    comes after every signal sent before it (the call itself is not counted)."""
    w.systemd.version()
    bus.calls.pop("Get Manager.Version", None)


def test_unit_object_paths_are_systemds():
    # as systemd names them (seen on Debian 12's systemd 252)
    assert unit_object_path("ollama.service") == "/org/freedesktop/systemd1/unit/ollama_2eservice"
    assert unit_object_path("-.mount") == "/org/freedesktop/systemd1/unit/_2d_2emount"
    assert unit_object_path("modprobe@dm_mod.service") == \
        "/org/freedesktop/systemd1/unit/modprobe_40dm_5fmod_2eservice"
    assert unit_object_path("run-credentials-systemd\\x2dsysusers.service.mount") == \
        "/org/freedesktop/systemd1/unit/run_2dcredentials_2dsystemd_5cx2dsysusers_2eservice_2emount"
    assert unit_object_path("2fa.service").startswith("/org/freedesktop/systemd1/unit/_32fa")


def test_idle_calls_cost_no_dbus_call(bus, watch):
    first = watch.states()
    assert first["ollama.service"].main_pid == 42 and first["ollama.service"].active_enter_mono == 5.0
    assert first["open-webui.service"].load_state == "not-found"
    assert watch.events and bus.subscribed == 1
    calls = sum(bus.calls.values())
    for _ in range(20):
        assert watch.states() == first
    assert sum(bus.calls.values()) == calls


def test_a_signalled_change_is_read_at_the_next_call(bus, watch):
    watch.states()
    bus.calls.clear()
    bus.set("ollama.service", active="active", sub="running", MainPID=77, NRestarts=1, Result="signal",
            ActiveEnterTimestampMonotonic=9_000_000)
    settle(watch, bus)
    st = watch.states()["ollama.service"]
    assert (st.main_pid, st.n_restarts, st.result, st.active_enter_mono) == (77, 1, "signal", 9.0)
    assert bus.calls["ListUnitsByNames"] == 1 and bus.calls["Get MainPID"] == 1
    bus.calls.clear()
    watch.states()
    assert not bus.calls


def test_job_change_other_units_and_reload(bus, watch):
    watch.states()
    bus.set("localaid-ollama-setup.service", job=12)  # a start job queued: the unit's Job property
    settle(watch, bus)
    bus.calls.clear()
    assert watch.states()["localaid-ollama-setup.service"].job is True
    assert bus.calls["ListUnitsByNames"] == 1 and not bus.calls["Get MainPID"]  # a job unit: no details
    # Other units' signals (systemd sends all of them on its private socket) never reach Python.
    received = watch._sub.received
    bus.set("unrelated.service", active="active", sub="running")
    bus.signal("UnitNew", "other.service", unit_object_path("other.service"))
    settle(watch, bus)
    bus.calls.clear()
    watch.states()
    assert watch._sub.received == received and not bus.calls
    bus.signal("Reloading", False)
    settle(watch, bus)
    watch.states()
    assert bus.calls["ListUnitsByNames"] == 1 and bus.calls["Get MainPID"] == 1  # every unit


def test_a_unit_file_that_appears_is_read_but_our_own_load_is_not_news(bus, watch):
    watch.states()
    assert watch.states()["open-webui.service"].load_state == "not-found"
    bus.calls.clear()
    # systemd loads a not-found unit to answer us, and says UnitNew: that one is ours
    bus.signal("UnitNew", "open-webui.service", unit_object_path("open-webui.service"))
    settle(watch, bus)
    watch.states()
    assert not bus.calls
    watch._fetched["open-webui.service"] -= UnitWatch.OWN_LOAD  # later: a unit file appeared
    bus.set("open-webui.service", signal=False)
    bus.signal("UnitNew", "open-webui.service", unit_object_path("open-webui.service"))
    settle(watch, bus)
    assert watch.states()["open-webui.service"].load_state == "loaded"
    assert bus.calls["ListUnitsByNames"] == 1


def test_resync_reads_everything_even_without_a_signal(bus, monkeypatch):
    monkeypatch.setattr(log, "stream", io.StringIO())
    now = [100.0]
    w = UnitWatch(Systemd(timeout=2, address=bus.address), WATCHED, services=["ollama.service"],
                  clock=lambda: now[0])
    try:
        w.states()
        bus.set("ollama.service", signal=False, MainPID=99)  # a missed signal
        assert w.states()["ollama.service"].main_pid == 42
        now[0] += UnitWatch.RESYNC_EVERY
        assert w.states()["ollama.service"].main_pid == 99
    finally:
        w.close()


def test_reexec_closes_the_connection_then_everything_is_read_again(bus, watch, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    watch.states()
    bus.drop_connections()
    bus.set("ollama.service", signal=False, MainPID=1234)  # changed while nobody listened
    deadline = time.monotonic() + 5
    while watch._sub.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch.states()["ollama.service"].main_pid == 1234
    assert watch.events and bus.subscribed == 2
    assert "systemd connection closed" in out.getvalue()
    bus.set("ollama.service", MainPID=1235)  # the new subscription hears changes
    settle(watch, bus)
    assert watch.states()["ollama.service"].main_pid == 1235


def test_acting_through_the_adapter_marks_the_unit(bus, watch):
    watch.states()
    bus.calls.clear()
    watch.systemd._changed("ollama.service")  # what start/restart/kill do after their call
    watch.states()
    assert bus.calls["ListUnitsByNames"] == 1


def test_a_broken_event_handler_is_loud_and_falls_back_to_reading_everything(bus, watch, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    watch.states()

    def broken(kind, name):
        raise RuntimeError("boom")
    watch._sub._on_event = broken
    bus.set("ollama.service", MainPID=5)
    settle(watch, bus)
    bus.calls.clear()
    assert watch.states()["ollama.service"].main_pid == 5
    assert "systemd signal not understood" in out.getvalue() and "boom" in out.getvalue()
    assert bus.calls["ListUnitsByNames"] == 1
