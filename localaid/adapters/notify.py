"""sd_notify over the AF_UNIX datagram socket systemd gives us in $NOTIFY_SOCKET.

Our own ~20 lines instead of the `sdnotify` package: that one swallows every error, so a
mis-set socket would silently turn the watchdog into a restart loop. Here a failed send is
reported once to the journal, and `enabled` tells whether systemd is listening at all.
"""

from __future__ import annotations

import os
import socket

from localaid import log


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) if address else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        if self._sock is None:
            return False
        # One assignment per line: a value with a newline (a status built from an installer's or
        # a registry's words) could otherwise add MAINPID= or READY= of its own.
        message = "\n".join(f"{k.upper()}={log.printable(str(v))}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self.address)
            return True
        except OSError as e:
            if not self._warned:
                log.error("sd_notify failed", socket=self.address.lstrip("\0"), error=e)
                self._warned = True
            return False

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def reloading(self) -> bool:
        return self.send(reloading=1)

    def stopping(self) -> bool:
        return self.send(stopping=1)


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= (systemd's advice), or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
