"""Who may do what on the API (issue 5, item 3), decided from the kernel's peer credentials.

- Connecting at all is the socket's mode and group (daemon.api.server).
- Reading (jobs, hosts, events, metrics) and submitting: root, the daemon's own uid, members of
  the socket's group and of the admin group. The check repeats what the socket's permissions
  already enforce, so a socket left world-writable (mode 0666) does not open the daemon to all.
- Cancelling and clearing a job: its owner (the uid that submitted it), root, the admin group.

Requests without peer credentials (a TCP listener) are left to that listener's own checks;
`require_peer` keeps them from changing anything.
"""

from __future__ import annotations

import grp
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from daemon.api.auth import PEER_KEY, Peer
from daemon.errors import Forbidden

log = logging.getLogger(__name__)

SOCKET_GID_KEY = web.AppKey("socket_gid", dict)  # socket path -> its group, read once


def admin_gid(settings: Any) -> int | None:
    """`[daemon] admin_group` (a name or a gid) as a gid; None when unset or unknown."""
    group = getattr(getattr(settings, "daemon", None), "admin_group", None)
    if group is None or group == "":
        return None
    if isinstance(group, int):
        return group
    text = str(group)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        log.warning("admin group %r does not exist; nobody is in it", text)
        return None


def socket_gid(request: web.Request) -> int | None:
    """The group of the unix socket the request came in on (None on any other transport)."""
    transport = request.transport
    path = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(path, str) or not path:
        return None
    cache: dict[str, int] = request.app[SOCKET_GID_KEY]
    if path not in cache:
        try:
            cache[path] = os.stat(path).st_gid
        except OSError:
            return None
    return cache[path]


def is_privileged(peer: Peer, settings: Any) -> bool:
    """Root or the admin group: may cancel and clear anyone's job, and force a cancel."""
    group = admin_gid(settings)
    return peer.is_root or (group is not None and peer.in_group(group))


def may_read(peer: Peer, settings: Any, sock_gid: int | None) -> bool:
    if peer.uid == os.getuid() or is_privileged(peer, settings):
        return True
    return sock_gid is not None and peer.in_group(sock_gid)


def require_manager(peer: Peer, settings: Any, owner: int, what: str) -> bool:
    """Raises Forbidden unless the peer may cancel or clear a job of `owner`; True when the
    peer is privileged (root or admin group), which some rules (force) ask again."""
    privileged = is_privileged(peer, settings)
    if peer.uid != owner and not privileged:
        raise Forbidden(
            f"{what} belongs to uid {owner}; only its owner, root or the admin group may "
            f"cancel or clear it (you are uid {peer.uid})"
        )
    return privileged


def setup_access(app: web.Application) -> None:
    app[SOCKET_GID_KEY] = {}


@web.middleware
async def access_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuses every request from a uid outside the socket's and the admin group."""
    peer = request.get(PEER_KEY)
    if peer is not None:
        from daemon.api.app import DAEMON_KEY  # app imports this module

        settings = request.app[DAEMON_KEY].settings
        if not may_read(peer, settings, socket_gid(request)):
            raise Forbidden(
                f"uid {peer.uid} is neither in the socket's group nor in the admin group"
            )
    return await handler(request)
