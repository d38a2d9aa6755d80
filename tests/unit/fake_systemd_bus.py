"""A stand-in for systemd's manager on a peer-to-peer D-Bus socket, for tests of the real adapter.

It speaks the few calls localaid makes (ListUnitsByNames, LoadUnit, Subscribe, Properties.Get of
the Unit and Service properties the policy reads; StartUnit, KillUnit ... are only recorded) and emits the signals systemd sends on its
private socket: PropertiesChanged on a unit's object (the Service interface, then the Unit one),
JobNew/JobRemoved, UnitNew/UnitRemoved and Reloading on the manager. It counts the calls it
answers, so a test can say how many D-Bus calls a cycle costs.

    bus = FakeSystemdBus(tmp_path / "bus")
    bus.set("ollama.service", active="active", sub="running", MainPID=42)
    sd = Systemd(address=bus.address)
    ...
    bus.close()

A GLib main loop runs in a thread of its own; every change is made there.
"""

from __future__ import annotations

import threading
from collections import Counter

from gi.repository import Gio, GLib

PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"

XML = """
<node>
  <interface name="org.freedesktop.systemd1.Manager">
    <method name="ListUnitsByNames"><arg type="as" direction="in"/><arg type="a(ssssssouso)" direction="out"/></method>
    <method name="LoadUnit"><arg type="s" direction="in"/><arg type="o" direction="out"/></method>
    <method name="Subscribe"/>
    <method name="StartUnit"><arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="o" direction="out"/></method>
    <method name="StopUnit"><arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="o" direction="out"/></method>
    <method name="RestartUnit"><arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="o" direction="out"/></method>
    <method name="KillUnit"><arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="i" direction="in"/></method>
    <method name="ResetFailedUnit"><arg type="s" direction="in"/></method>
    <property name="Version" type="s" access="read"/>
    <signal name="UnitNew"><arg type="s"/><arg type="o"/></signal>
    <signal name="UnitRemoved"><arg type="s"/><arg type="o"/></signal>
    <signal name="JobNew"><arg type="u"/><arg type="o"/><arg type="s"/></signal>
    <signal name="JobRemoved"><arg type="u"/><arg type="o"/><arg type="s"/><arg type="s"/></signal>
    <signal name="Reloading"><arg type="b"/></signal>
  </interface>
  <interface name="org.freedesktop.systemd1.Unit">
    <property name="ActiveState" type="s" access="read"/>
    <property name="ActiveEnterTimestampMonotonic" type="t" access="read"/>
  </interface>
  <interface name="org.freedesktop.systemd1.Service">
    <property name="MainPID" type="u" access="read"/>
    <property name="NRestarts" type="u" access="read"/>
    <property name="Result" type="s" access="read"/>
    <property name="ControlGroup" type="s" access="read"/>
  </interface>
</node>
"""
NODE = Gio.DBusNodeInfo.new_for_xml(XML)
TYPES = {"ActiveState": "s", "ActiveEnterTimestampMonotonic": "t", "MainPID": "u", "NRestarts": "u",
         "Result": "s", "ControlGroup": "s"}


def unit_path(name: str) -> str:
    out = []
    for i, b in enumerate(name.encode()):
        c = chr(b)
        out.append(c if c.isascii() and (c.isalpha() or (i and c.isdigit())) else f"_{b:02x}")
    return PATH + "/unit/" + "".join(out)


class FakeSystemdBus:
    def __init__(self, socket_path):
        self.units: dict[str, dict] = {}
        self.calls: Counter[str] = Counter()
        self.subscribed = 0
        self.acted: list[tuple] = []  # StartUnit, KillUnit ... with their arguments
        self._cons: list = []
        self._ctx = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._ctx, False)
        self.address = f"unix:path={socket_path}"
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)

    # ---- the server thread ---------------------------------------------------------------
    def _run(self, ready):
        self._ctx.push_thread_default()
        self._server = Gio.DBusServer.new_sync(self.address, Gio.DBusServerFlags.NONE, Gio.dbus_generate_guid(),
                                               None, None)
        self._server.connect("new-connection", self._on_connection)
        self._server.start()
        ready.set()
        self._loop.run()
        self._ctx.pop_thread_default()

    def _on_connection(self, _server, con):
        con.register_object(PATH, NODE.interfaces[0], self._manager_call, self._manager_get, None)
        for name in self.units:
            self._register_unit(con, name)
        self._cons.append(con)
        return True

    def _register_unit(self, con, name):
        for iface in NODE.interfaces[1:]:
            con.register_object(unit_path(name), iface, None, self._unit_get, None)

    def _manager_get(self, _con, _sender, _path, _iface, prop):
        self.calls["Get Manager." + prop] += 1
        return GLib.Variant("s", "252-fake")

    def _unit_get(self, _con, _sender, path, _iface, prop):
        self.calls["Get " + prop] += 1
        unit = next(u for n, u in self.units.items() if unit_path(n) == path)
        return GLib.Variant(TYPES[prop], unit[prop])

    def _manager_call(self, _con, _sender, _path, _iface, method, params, invocation):
        self.calls[method] += 1
        if method == "ListUnitsByNames":
            rows = []
            for name in params.unpack()[0]:
                u = self.units.get(name)
                load, active, sub, job = (u["load"], u["ActiveState"], u["sub"], u["job"]) if u else \
                    ("not-found", "inactive", "dead", 0)
                rows.append((name, "", load, active, sub, "", unit_path(name), job,
                             "start" if job else "", "/org/freedesktop/systemd1/job/%d" % job if job else "/"))
            invocation.return_value(GLib.Variant("(a(ssssssouso))", (rows,)))
        elif method == "LoadUnit":
            invocation.return_value(GLib.Variant("(o)", (unit_path(params.unpack()[0]),)))
        elif method == "Subscribe":
            self.subscribed += 1
            invocation.return_value(None)
        elif method in ("StartUnit", "StopUnit", "RestartUnit"):  # recorded; the test sets the outcome
            self.acted.append((method, *params.unpack()))
            invocation.return_value(GLib.Variant("(o)", ("/org/freedesktop/systemd1/job/1",)))
        else:
            self.acted.append((method, *params.unpack()))
            invocation.return_value(None)

    def _in_loop(self, fn, *args):
        done = threading.Event()
        out = []

        def run(*_):
            try:
                out.append(fn(*args))
            finally:
                done.set()
            return False
        src = GLib.idle_source_new()
        src.set_callback(run)
        src.attach(self._ctx)
        if not done.wait(5):
            raise TimeoutError("fake systemd did not run the change")
        return out[0] if out else None

    def _emit(self, path, iface, member, value):
        for con in list(self._cons):
            if con.is_closed():
                self._cons.remove(con)
                continue
            con.emit_signal(None, path, iface, member, value)
            con.flush_sync(None)

    # ---- what tests do -------------------------------------------------------------------
    def set(self, name: str, signal: bool = True, load: str = "loaded", active: str | None = None,
            sub: str | None = None, job: int | None = None, **props) -> None:
        """Change a unit (creating it if new) and, unless signal=False, emit what systemd would."""
        def change():
            new = name not in self.units
            u = self.units.setdefault(name, {"load": "loaded", "ActiveState": "inactive", "sub": "dead", "job": 0,
                                             "ActiveEnterTimestampMonotonic": 0, "MainPID": 0, "NRestarts": 0,
                                             "Result": "success", "ControlGroup": ""})
            u["load"] = load
            if active is not None:
                u["ActiveState"] = active
            if sub is not None:
                u["sub"] = sub
            if job is not None:
                u["job"] = job
            u.update(props)
            if new:
                for con in self._cons:
                    self._register_unit(con, name)
            if signal:
                if new:
                    self._emit(PATH, MANAGER, "UnitNew", GLib.Variant("(so)", (name, unit_path(name))))
                service = {k: GLib.Variant(TYPES[k], u[k]) for k in ("MainPID", "NRestarts", "Result")}
                unit = {"ActiveState": GLib.Variant("s", u["ActiveState"]),
                        "SubState": GLib.Variant("s", u["sub"]),
                        "ActiveEnterTimestampMonotonic": GLib.Variant("t", u["ActiveEnterTimestampMonotonic"])}
                for iface, changed in (("org.freedesktop.systemd1.Service", service),
                                       ("org.freedesktop.systemd1.Unit", unit)):
                    self._emit(unit_path(name), "org.freedesktop.DBus.Properties", "PropertiesChanged",
                               GLib.Variant("(sa{sv}as)", (iface, changed, [])))
        self._in_loop(change)

    def signal(self, member: str, *args) -> None:
        """Emit a manager signal: signal("Reloading", False), signal("JobNew", 7, path, name)..."""
        sig = {"UnitNew": "(so)", "UnitRemoved": "(so)", "JobNew": "(uos)", "JobRemoved": "(uoss)",
               "Reloading": "(b)"}[member]
        self._in_loop(lambda: self._emit(PATH, MANAGER, member, GLib.Variant(sig, args)))

    def drop_connections(self) -> None:
        """What `systemctl daemon-reexec` does to clients of the private socket."""
        def drop():
            for con in self._cons:
                con.close_sync(None)
            self._cons.clear()
        self._in_loop(drop)

    def close(self) -> None:
        self._in_loop(lambda: (self._server.stop(), [c.close_sync(None) for c in self._cons]))
        self._loop.quit()
        self._thread.join(5)
