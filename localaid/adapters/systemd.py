"""systemd over D-Bus: unit states and the few manager calls localaid makes.

pydbus only opens the connection; calls go through Gio's call_sync with a timeout so a slow
manager can never hang a caller, and every failure becomes a SystemdError with a readable text
(pydbus itself raises bare GLib.Error objects).

As root we use systemd's private socket /run/systemd/private, as systemctl does: it needs no
dbus-daemon and no polkit, so the hardened localaid.service can manage units without
CAP_SYS_ADMIN. Elsewhere we use the system bus.

Subscription hands systemd's signals about a few units to the caller (observe.UnitWatch keeps
their states with it instead of asking systemd every cycle). No GLib main loop runs: signals wait
in a main context of their own until the caller dispatches them.
"""

from __future__ import annotations

import os
import threading

from localaid.records import UnitState

DEST = "org.freedesktop.systemd1"
PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPS = "org.freedesktop.DBus.Properties"
PRIVATE_SOCKET = "/run/systemd/private"
NOT_FOUND = ("not-found", "inactive", "dead", False)


class SystemdError(Exception):
    pass


def _connect(address: str | None = None):
    try:
        from gi.repository import Gio
        import pydbus
    except ImportError as e:  # pragma: no cover - the package depends on both
        raise SystemdError(f"python3-pydbus/python3-gi missing: {e}") from e
    if address is not None:  # a peer-to-peer socket like the private one (tests)
        try:
            con = Gio.DBusConnection.new_for_address_sync(
                address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT, None, None)
        except Exception as e:  # GLib.Error
            raise SystemdError(f"cannot reach systemd at {address}: {_text(e)}") from e
        return pydbus.bus.Bus(con), True
    errors = []
    if os.geteuid() == 0 and os.path.exists(PRIVATE_SOCKET):
        try:
            con = Gio.DBusConnection.new_for_address_sync(
                "unix:path=" + PRIVATE_SOCKET, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT, None, None)
            # A cheap first call: a long one (Reload) sent first on a fresh private connection was
            # seen to go unanswered in 4 of 8 tries; after one short call it never was (12 of 12).
            from gi.repository import GLib
            con.call_sync(DEST, PATH, PROPS, "Get", GLib.Variant("(ss)", (MANAGER, "Version")), None, 0,
                          5000, None)
            return pydbus.bus.Bus(con), True
        except Exception as e:  # GLib.Error
            errors.append(f"{PRIVATE_SOCKET}: {_text(e)}")
    try:
        return pydbus.SystemBus(), False
    except Exception as e:
        errors.append(f"system bus: {_text(e)}")
    raise SystemdError("cannot reach systemd: " + "; ".join(errors))


def _text(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    # GLib prefixes remote errors with "GDBus.Error:org.freedesktop...: "; keep the human part.
    if msg.startswith("GDBus.Error:") and ": " in msg:
        msg = msg.split(": ", 1)[1]
    return msg


def unit_object_path(name: str) -> str:
    """The object path systemd gives a unit, without asking it (asking would load the unit):
    every byte but ASCII letters, and digits after the first, becomes _XX."""
    out = []
    for i, b in enumerate(name.encode()):
        c = chr(b)
        out.append(c if c.isascii() and (c.isalpha() or (i and c.isdigit())) else f"_{b:02x}")
    return PATH + "/unit/" + "".join(out)


class Systemd:
    """Thread-safe: Gio connections may be used from several threads."""

    def __init__(self, timeout: float = 5.0, address: str | None = None):
        self.timeout_ms = int(timeout * 1000)
        self.address = address
        self._bus = None
        self._lock = threading.Lock()
        self.private = False
        self._on_change: list = []  # told about the units this adapter asked systemd to change

    def _con(self):
        with self._lock:
            if self._bus is None or self._bus.con.is_closed():
                self._bus, self.private = _connect(self.address)
            return self._bus.con

    def _current(self):
        bus = self._bus
        return bus.con if bus is not None else None

    def _call(self, path: str, interface: str, method: str, signature: str | None, args: tuple,
              timeout_ms: int | None = None):
        from gi.repository import GLib
        params = GLib.Variant(f"({signature})", args) if signature else None
        try:
            reply = self._con().call_sync(DEST, path, interface, method, params, None, 0,
                                          timeout_ms or self.timeout_ms, None)
        except SystemdError:
            raise
        except Exception as e:
            if "closed" in _text(e).lower():
                with self._lock:
                    self._bus = None
            raise SystemdError(f"{method}: {_text(e)}") from e
        return reply.unpack() if reply is not None else ()

    # ---- reading -------------------------------------------------------------------------
    def unit_path(self, name: str) -> str:
        return self._call(PATH, MANAGER, "LoadUnit", "s", (name,))[0]

    def summaries(self, names: list[str]) -> dict[str, tuple[str, str, str, bool]]:
        """(LoadState, ActiveState, SubState, job queued) of many units in one cheap call."""
        rows = self._call(PATH, MANAGER, "ListUnitsByNames", "as", (list(names),))[0]
        return {r[0]: (r[2], r[3], r[4], bool(r[7])) for r in rows}

    def details(self, name: str) -> dict:
        """The service properties the policy needs, fetched one by one: a GetAll of a service
        unpacks ~250 properties and costs 10× more CPU (measured: 12 ms vs 1.3 ms)."""
        path = self.unit_path(name)
        out = {"ActiveEnterTimestampMonotonic":
               self._call(path, PROPS, "Get", "ss", ("org.freedesktop.systemd1.Unit",
                                                     "ActiveEnterTimestampMonotonic"))[0]}
        for prop in ("MainPID", "NRestarts", "Result", "ControlGroup"):
            out[prop] = self._call(path, PROPS, "Get", "ss", ("org.freedesktop.systemd1.Service", prop))[0]
        return out

    def state(self, name: str) -> UnitState:
        summary = self.summaries([name]).get(name, NOT_FOUND)
        detail = self.details(name) if summary[0] == "loaded" and name.endswith(".service") else {}
        return make_state(name, summary, detail)

    def version(self) -> str:
        return self._call(PATH, PROPS, "Get", "ss", (MANAGER, "Version"))[0]

    def system_state(self) -> str:
        return self._call(PATH, PROPS, "Get", "ss", (MANAGER, "SystemState"))[0]

    # ---- signals -------------------------------------------------------------------------
    def subscribe(self, names, on_event) -> "Subscription":
        """Listen to systemd's signals about `names` (see Subscription); raises SystemdError."""
        return Subscription(self, names, on_event)

    def on_change(self, fn) -> None:
        """fn(unit or None for all) is called after each call through this adapter that changes
        a unit (start, stop, kill ...), so that a UnitWatch reads it again without waiting for
        the signal."""
        self._on_change.append(fn)

    def _changed(self, name: str | None) -> None:
        for fn in self._on_change:
            fn(name)

    # ---- acting --------------------------------------------------------------------------
    def start(self, name: str, mode: str = "replace") -> str:
        try:
            return self._call(PATH, MANAGER, "StartUnit", "ss", (name, mode))[0]
        finally:
            self._changed(name)

    def stop(self, name: str, mode: str = "replace") -> str:
        try:
            return self._call(PATH, MANAGER, "StopUnit", "ss", (name, mode))[0]
        finally:
            self._changed(name)

    def restart(self, name: str, mode: str = "replace") -> str:
        try:
            return self._call(PATH, MANAGER, "RestartUnit", "ss", (name, mode))[0]
        finally:
            self._changed(name)

    def kill(self, name: str, who: str = "all", signal: int = 9) -> None:
        try:
            self._call(PATH, MANAGER, "KillUnit", "ssi", (name, who, signal))
        finally:
            self._changed(name)

    def reset_failed(self, name: str) -> None:
        try:
            self._call(PATH, MANAGER, "ResetFailedUnit", "s", (name,))
        finally:
            self._changed(name)

    def enable(self, *names: str) -> None:
        try:
            self._call(PATH, MANAGER, "EnableUnitFiles", "asbb", (list(names), False, True))
        finally:
            self._changed(None)

    def daemon_reload(self) -> None:
        try:
            self._call(PATH, MANAGER, "Reload", None, (), timeout_ms=90_000)
        finally:
            self._changed(None)


class Subscription:
    """systemd's signals about some units, on the adapter's connection of the moment.

    Subscribed: PropertiesChanged on each unit's object (systemd sends it, for the Service and
    then the Unit interface, on every change of state, job, main PID, restart count or result),
    UnitNew of these units, and the manager's Reloading and UnitFilesChanged. GDBus filters
    by object path and first argument, so other units' signals (on the private socket systemd
    sends every client all of them) never reach Python. Matching ones wait in a main context of
    this subscription's own and reach on_event(kind, unit) only through pump(), in the caller's
    thread: kind is "changed" or "new" (unit: one of `names`), "reload" or "files" (unit None).

    On the bus, systemd sends signals only after Subscribe(), called here too (on the private
    socket it does nothing).
    """

    def __init__(self, systemd: Systemd, names, on_event):
        from gi.repository import Gio, GLib
        self.systemd = systemd
        self.names = frozenset(names)
        self._on_event = on_event
        self._by_path = {unit_object_path(n): n for n in self.names}
        self.errors: list[str] = []  # raised by on_event or while reading a signal; taken by the caller
        self.received = 0
        self.con = systemd._con()
        self._ctx = GLib.MainContext.new()
        sender = None if systemd.private else DEST  # a peer-to-peer connection has no sender names
        wanted = [(PROPS, "PropertiesChanged", path, None) for path in self._by_path]
        wanted += [(MANAGER, "UnitNew", PATH, name) for name in sorted(self.names)]
        wanted += [(MANAGER, "Reloading", PATH, None), (MANAGER, "UnitFilesChanged", PATH, None)]
        self._ids: list[int] = []
        self._ctx.push_thread_default()  # the callbacks are dispatched in this context
        try:
            for iface, member, path, arg0 in wanted:
                self._ids.append(self.con.signal_subscribe(sender, iface, member, path, arg0,
                                                           Gio.DBusSignalFlags.NONE, self._on_signal))
        finally:
            self._ctx.pop_thread_default()
        try:
            systemd._call(PATH, MANAGER, "Subscribe", None, ())
        except SystemdError as e:
            if "already subscribed" not in str(e).lower():
                self.close()
                raise

    @property
    def alive(self) -> bool:
        """False once the connection closed (systemd re-executed) or the adapter opened another."""
        return not self.con.is_closed() and self.systemd._current() is self.con

    def pump(self, limit: int = 10_000) -> int:
        """Dispatch the signals received so far; never waits. Returns how many were dispatched."""
        n = 0
        while n < limit and self._ctx.iteration(False):
            n += 1
        return n

    def _on_signal(self, _con, _sender, path, _iface, member, params, *_user_data) -> None:
        self.received += 1
        try:
            if member == "PropertiesChanged":
                name = self._by_path.get(path)
                if name is not None:
                    self._on_event("changed", name)
            elif member == "UnitNew":
                self._on_event("new", params.get_child_value(0).get_string())
            elif member == "Reloading":
                self._on_event("reload", None)
            elif member == "UnitFilesChanged":
                self._on_event("files", None)
        except Exception as e:  # GLib would print it to stderr and carry on: hand it to the caller
            self.errors.append(f"{member}: {type(e).__name__}: {e}")

    def close(self) -> None:
        for sid in self._ids:
            self.con.signal_unsubscribe(sid)
        self._ids.clear()
        self.pump()  # drop what was queued


def make_state(name: str, summary: tuple[str, str, str, bool], detail: dict) -> UnitState:
    load, active, sub, job = summary
    return UnitState(
        name=name, load_state=load, active_state=active, sub_state=sub, job=job,
        main_pid=int(detail.get("MainPID", 0)),
        n_restarts=int(detail.get("NRestarts", 0)),
        result=detail.get("Result", ""),
        control_group=detail.get("ControlGroup", ""),
        active_enter_mono=int(detail.get("ActiveEnterTimestampMonotonic", 0)) / 1e6,
    )
