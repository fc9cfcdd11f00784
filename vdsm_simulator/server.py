"""The simulator's listener: STOMP and HTTP on one port, as VDSM's protocol detector serves them.

How the rest of the simulator plugs in (both protocols live in `vdsm_simulator.jsonrpc`):

    class RpcHost(Protocol):            # one simulated VDSM
        name: str                       # read-only is enough
        faults: HostFaults              # wire faults are read from faults.settings on every use
        events: EventBus                # published events go to `jms.queue.events` subscribers
        async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any
        def call_now(self, method: str, params: dict[str, Any] | list[Any]) -> Any
                                        # the same without a task, or NOT_NOW if it may wait

    class HostDirectory(Protocol):      # the Cluster
        def get_host(self, name: str | None) -> RpcHost | None   # None: the default host

Usage::

    server = SimServer(cluster, cluster.clock, ssl=ctx, port_per_host=cluster.hosts)
    server.mount_control(build_control_app(cluster, on_host_down=server.disconnect_host))
    await server.start()                # server.port, server.host_ports
    ...
    await server.stop()

Detection follows `vdsm.protocoldetector`: wait for as many bytes as the longest STOMP command
(11, "UNSUBSCRIBE") or give up after 10 s; bytes that start with a STOMP command go to STOMP,
bytes that start with an HTTP method and " /" go to the aiohttp application, anything else is
closed. (VDSM itself only detects "GET /" and "PUT /" and has no JSON-RPC over HTTP; the
``POST /hosts/{name}/jsonrpc`` route is the simulator's own, for tools and debugging.)
The detector hands the live transport over with `transport.set_protocol`, so TLS, plain TCP,
asyncio and uvloop transports all work the same.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Iterable
from typing import Any, Final, cast

from aiohttp import web

from vdsm_simulator import jsonrpc
from vdsm_simulator.clock import SimClock
from vdsm_simulator.jsonrpc import HostDirectory, RpcHost
from vdsm_simulator.stomp_server import StompBroker, WireOptions

__all__ = ["HostDirectory", "RpcHost", "SimServer", "WireOptions"]

log = logging.getLogger(__name__)

STOMP_STARTS: Final = (
    b"CONNECT",
    b"CONNECTED",
    b"DISCONNECT",
    b"ERROR",
    b"MESSAGE",
    b"RECEIPT",
    b"SEND",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
)
HTTP_STARTS: Final = tuple(
    m + b" /" for m in (b"GET", b"PUT", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH")
)
REQUIRED_SIZE: Final = max(len(s) for s in STOMP_STARTS)


class _Detector(asyncio.Protocol):
    """Buffers the first bytes of a connection until the protocol is known."""

    def __init__(self, server: SimServer, fixed_host: str | None) -> None:
        self._server = server
        self._fixed_host = fixed_host
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit from asyncio.Transport; they only behave like one.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._server.detect_timeout, self._give_up
        )

    def _give_up(self) -> None:
        log.debug("no protocol detected within %s s", self._server.detect_timeout)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) < REQUIRED_SIZE:
            return
        assert self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        protocol: asyncio.Protocol
        if self._buf.startswith(STOMP_STARTS):
            protocol = self._server.broker.session(self._fixed_host)
        elif self._buf.startswith(HTTP_STARTS) and self._server.http_factory is not None:
            protocol = self._server.http_factory()
        else:
            log.warning("unrecognized protocol: %r", self._buf[:32])
            self._transport.abort()
            return
        transport, self._transport = self._transport, None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(self._buf)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class SimServer:
    """Listens for every simulated host; one shared port, optionally one more port per host."""

    def __init__(
        self,
        directory: HostDirectory,
        clock: SimClock | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        control_app: web.Application | None = None,
        port_per_host: Iterable[str] = (),
        options: WireOptions | None = None,
        detect_timeout: float = 10.0,
        backlog: int = 4096,
    ) -> None:
        self.directory = directory
        self.clock = clock or SimClock()
        self.bind_host = host
        self.requested_port = port
        self.ssl = ssl
        self.detect_timeout = detect_timeout
        self.backlog = backlog
        self.options = options or WireOptions()
        self.broker = StompBroker(directory, self.clock, self.options)
        self.app = web.Application(client_max_size=self.options.max_frame_size)
        self.app.router.add_post("/hosts/{name}/jsonrpc", self._http_jsonrpc)
        if control_app is not None:
            self.mount_control(control_app)
        self._per_host = list(port_per_host)
        self._runner: web.AppRunner | None = None
        self.http_factory: Any = None
        self._servers: list[asyncio.Server] = []
        self.port = 0
        self.host_ports: dict[str, int] = {}

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        # Short shutdown: a handler held by an injected late reply must not hold up stop().
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        self.http_factory = self._runner.server
        self.port = await self._listen(self.requested_port, None)
        for name in self._per_host:
            await self.add_host_listener(name)
        log.info("simulator listening on %s:%d%s", self.bind_host, self.port, self._tls_note())

    def _tls_note(self) -> str:
        return " (TLS)" if self.ssl is not None else ""

    async def _listen(self, port: int, fixed_host: str | None) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Detector(self, fixed_host),
            self.bind_host,
            port,
            ssl=self.ssl,
            ssl_handshake_timeout=self.detect_timeout if self.ssl is not None else None,
            backlog=self.backlog,
            reuse_address=True,
        )
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def add_host_listener(self, name: str, port: int = 0) -> int:
        """Give one host a port of its own, where the CONNECT ``host`` header is ignored."""
        bound = await self._listen(port, name)
        self.host_ports[name] = bound
        return bound

    def disconnect_host(self, name: str) -> None:
        """Drop every STOMP connection to a host; fits `build_control_app(on_host_down=...)`."""
        self.broker.disconnect_host(name)

    def mount_control(self, control_app: web.Application) -> None:
        """Mount the control API under ``/_control/`` after construction, before `start`.

        Lets the control app be built with this server's `disconnect_host` as its hook.
        """
        self.app.add_subapp("/_control/", control_app)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        await self.broker.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _http_jsonrpc(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        host = self.directory.get_host(name)
        if host is None:
            return _json_error(404, "unknown_host", f"no simulated host named {name!r}")
        faults = host.faults
        settings = faults.settings
        if settings.down:
            return _json_error(503, "host_down", f"host {name} is down")
        body = await request.read()
        reply = await jsonrpc.handle_payload(host, body)
        if settings.latency:
            await self.clock.sleep(settings.latency)
        # Over HTTP a lost reply can only look like a broken connection.
        if faults.chance(settings.reset_connections) or faults.chance(settings.drop_replies):
            log.info("%s: HTTP reply dropped, connection reset (injected)", name)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=204)  # never reaches the client
        if faults.chance(settings.late_replies):
            await self.clock.sleep(settings.late_delay)
        if reply is None:
            return web.Response(status=204)
        return web.Response(body=reply, content_type="application/json")
