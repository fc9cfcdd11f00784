"""Who is on the other end of the socket: peer credentials from the kernel, not from the client.

On a unix socket the kernel tells us the connecting process's uid, gid and pid (SO_PEERCRED);
nothing the client sends can forge them. The supplementary groups come from /proc/<pid>/status,
read when the request arrives. The identity goes on the request as `request["peer"]`; the uid is
the owner of every job the request submits.

What each identity may do (reads for the socket's group, cancel and clear for the job's owner,
root and the admin group) is decided in daemon.api.access.
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from daemon.errors import Forbidden

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]  # supplementary groups (empty if the process is already gone)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        """The primary or a supplementary group (the socket's and admin group checks)."""
        return gid == self.gid or gid in self.groups


def read_groups(pid: int, proc: Path = Path("/proc")) -> frozenset[int]:
    """The `Groups:` line of /proc/<pid>/status; empty when it cannot be read.

    Failing closed to "no supplementary groups" is safe: groups only ever grant rights.
    """
    try:
        text = (proc / str(pid) / "status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line[len("Groups:") :].split() if g.isdigit())
    return frozenset()


def peer_of_socket(sock: Any) -> Peer | None:
    """Credentials of a connected unix socket; None for any other kind of socket."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        log.warning("SO_PEERCRED failed on the API socket", exc_info=True)
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid, read_groups(pid) if pid > 0 else frozenset())


def peer_of_request(request: web.Request) -> Peer | None:
    transport = request.transport
    if transport is None:
        return None
    return peer_of_socket(transport.get_extra_info("socket"))


# request["peer"]: set when the caller is known (always, on the unix socket)
PEER_KEY = web.RequestKey("peer", Peer)


@web.middleware
async def peer_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Puts the caller's identity on every request that has one (any request on a unix socket)."""
    peer = peer_of_request(request)
    if peer is not None:
        request[PEER_KEY] = peer
    response: web.StreamResponse = await handler(request)
    return response


def require_peer(request: web.Request) -> Peer:
    """The caller's identity, for handlers that change state: no identity, no change."""
    if PEER_KEY not in request:
        raise Forbidden("the caller's identity is unknown (peer credentials need a unix socket)")
    return request[PEER_KEY]
