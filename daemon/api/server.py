"""Serving the API on a unix socket, and never on someone else's.

The socket is bound, given its mode and group, and only then listened on: no client can connect
while it still has the umask's permissions. A socket file left by a crashed daemon is removed, but
only after a connection attempt is refused; if something answers, another daemon owns the path
and we refuse to start rather than steal it.

Under socket activation (taskmgrd.socket) systemd has already bound the socket with the unit's
SocketMode/SocketGroup and passes it listening: it is served as it is, and its file is left in
place at stop, since systemd keeps listening on it and starts the daemon again on the next
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)


class ApiStartError(RuntimeError):
    """The API cannot be served on the configured socket; the message says why."""


@dataclass
class ApiServer:
    """What `stop_api` needs: the runner, and the socket file that is ours to remove."""

    runner: web.AppRunner
    path: Path
    inode: int | None  # None: the socket is systemd's, its file not ours to remove


async def _is_alive(path: Path) -> bool:
    """True when something accepts connections on the socket file."""
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a listener too busy to accept is still a listener
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ApiStartError(f"cannot check the existing socket {path}: {e}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _existing_socket(path: Path) -> bool:
    """Whether a socket file is in the way; anything else at the path is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ApiStartError(f"{path} exists and is not a socket; refusing to replace it")
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _clear_stale(path: Path) -> None:
    if not _existing_socket(path):
        return
    if await _is_alive(path):
        raise ApiStartError(f"another process answers on {path}; is taskmgrd already running?")
    log.info("removing stale API socket %s", path)
    _remove(path)


def _gid(group: str | int) -> int:
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ApiStartError(f"socket group {group!r} does not exist") from None


def _bind(path: Path, mode: int, group: str | int | None) -> tuple[socket.socket, int]:
    """A listening socket at `path` with its mode and group set before listen(); and its inode."""
    gid = None if group is None else _gid(group)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(path))
        except OSError as e:
            raise ApiStartError(f"cannot bind the API socket {path}: {e}") from None
        try:
            os.chmod(path, mode)
            if gid is not None:
                os.chown(path, -1, gid)
        except OSError as e:
            _remove(path)
            raise ApiStartError(f"cannot set mode/group of {path}: {e}") from None
        inode = os.stat(path).st_ino
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, inode


# Seconds a stop waits for requests in flight (an event stream never ends by itself); well
# inside the unit's TimeoutStopSec.
SHUTDOWN_TIMEOUT = 5.0


async def start_api(
    app: web.Application,
    socket_path: Path | str,
    *,
    mode: int = 0o660,
    group: str | int | None = None,
    inherited: socket.socket | None = None,
) -> ApiServer:
    """Serve `app` on `socket_path`, or on the listening socket systemd passed (`inherited`);
    raises ApiStartError with the reason when it cannot."""
    path = Path(socket_path)
    inode: int | None
    if inherited is not None:
        sock, inode = inherited, None
        sock.setblocking(False)
    else:
        os.makedirs(path.parent, exist_ok=True)
        await _clear_stale(path)
        sock, inode = _bind(path, mode, group)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        if inode is not None:
            _remove(path)
        raise
    if inode is None:
        log.info("API listening on %s (socket passed by systemd)", path)
    else:
        log.info("API listening on %s (mode %o, group %s)", path, mode, group or "-")
    return ApiServer(runner, path, inode)


async def stop_api(server: ApiServer) -> None:
    """Stop serving and remove the socket file, unless another process has replaced it."""
    await server.runner.cleanup()
    if server.inode is None:
        return
    with contextlib.suppress(FileNotFoundError):
        if os.stat(server.path).st_ino == server.inode:
            _remove(server.path)
