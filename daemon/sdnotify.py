"""systemd's readiness protocol (sd_notify) and socket activation (sd_listen_fds), by hand.

Both are a few lines of documented protocol (sd_notify(3), sd_listen_fds(3)): one datagram of
`KEY=value` lines to the AF_UNIX socket named by $NOTIFY_SOCKET, and listening sockets passed as
fds 3.. with $LISTEN_PID / $LISTEN_FDS. The PyPI `sdnotify` package covers only the first, has
not been released since 2017 and swallows every error; `systemd-python` needs libsystemd headers
and a compiler. Writing them here costs less than either and keeps errors visible.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first fd systemd passes


class Notifier:
    """Sends state changes to the service manager; does nothing when not run by one."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract-namespace socket; Python spells it with a leading NUL.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A full receive queue must not stall the event loop: drop the message instead.
            self._sock.setblocking(False)
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines (READY=1, STATUS=..., ...); False when it could not be sent."""
        if self._sock is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as e:  # the manager going away must not take the daemon with it
            log.warning("sd_notify %r to %s failed: %s", message, self.address, e)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_seconds(env: MutableMapping[str, str]) -> float | None:
    """WatchdogSec, when the watchdog is meant for this process (sd_watchdog_enabled)."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


class ActivationError(RuntimeError):
    """Sockets passed by systemd that the daemon cannot use; the message says why."""


@dataclass(frozen=True)
class Inherited:
    """The listening socket systemd passed, and the name it is bound to."""

    sock: socket.socket
    path: str


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[int]:
    """The fds passed for this process (sd_listen_fds with unset_environment: the variables are
    removed so that a child process does not take them for its own)."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)  # sd_listen_fds sets FD_CLOEXEC too
    return fds


def inherited_api_socket(environ: MutableMapping[str, str] | None = None) -> Inherited | None:
    """The API's listening unix stream socket from socket activation, or None without one."""
    fds = listen_fds(environ)
    if not fds:
        return None
    if len(fds) != 1:
        raise ActivationError(f"systemd passed {len(fds)} sockets; taskmgrd.socket listens on one")
    try:
        sock = socket.socket(fileno=fds[0])
    except OSError as e:
        raise ActivationError(f"fd {fds[0]} passed by systemd is not a socket: {e}") from None
    accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not accepting:
        sock.close()
        raise ActivationError(
            "the socket passed by systemd must be a listening AF_UNIX stream socket "
            "(ListenStream=/path in taskmgrd.socket)"
        )
    sock.setblocking(False)
    name = sock.getsockname()
    return Inherited(sock, name.decode() if isinstance(name, bytes) else str(name))
