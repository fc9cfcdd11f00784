"""JSON-RPC over HTTP POST, the second transport (the simulator's `/hosts/<name>/jsonrpc`).

Same surface and error mapping as `StompRpcClient` minus events: HTTP has no server push, so a
host reached over HTTP is monitored by polling only (`on_event` accepts a callback that is never
called). One `aiohttp.ClientSession` per client keeps connections alive between calls; a timeout
or a refused connection is 5022, as on STOMP, and a reply that is not JSON-RPC is `BadReply`.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from jsonrpcclient import Error, Ok, parse, request

from daemon.vdsm.client import DEFAULT_TIMEOUT
from daemon.vdsm.errors import ClientTimeout, ConnectionLost, VdsmCallError, error_for
from daemon.vdsm.verbs import BadReply


class HttpRpcClient:
    def __init__(
        self,
        address: str,
        port: int,
        host_name: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://{address}:{port}/hosts/{host_name}/jsonrpc"
        self.label = host_name
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def on_event(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        """No events over HTTP; accepted so callers need not know the transport."""

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        deadline = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout)
        body = request(method, params=params, id=str(uuid.uuid4()))
        try:
            async with self._session.post(
                self.url, json=body, timeout=deadline, ssl=self.ssl_context or False
            ) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    raise ConnectionLost(
                        5022, f"HTTP {resp.status}: {text[:200]}", method, self.label
                    )
                reply = await resp.json(content_type=None)
        except ValueError as e:  # not JSON at all: a broken peer, not a lost connection
            raise BadReply(-32603, f"reply is not JSON: {e}", method, self.label) from None
        except TimeoutError:
            raise ClientTimeout.of_call(method, self.label) from None
        except aiohttp.ClientError as e:
            raise ConnectionLost(5022, f"connection failed: {e}", method, self.label) from None
        if not isinstance(reply, dict):
            raise BadReply(-32603, f"unexpected reply {reply!r:.200}", method, self.label)
        try:
            parsed = parse(reply)
            if isinstance(parsed, Ok):
                return parsed.result
            if isinstance(parsed, Error):
                code = int(parsed.code)
        except (KeyError, TypeError, ValueError) as e:
            raise BadReply(
                -32603, f"malformed reply: {e}: {reply!r:.200}", method, self.label
            ) from None
        if isinstance(parsed, Error):
            raise error_for(code, str(parsed.message), method, self.label)
        raise BadReply(-32603, f"unexpected reply {reply!r:.200}", method, self.label)

    async def call_each(
        self,
        calls: Sequence[tuple[str, dict[str, Any] | None]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]:
        """Several calls at once (one POST each); each entry is a result or the VdsmCallError
        it raised, as `StompRpcClient.call_each` answers."""
        outcomes = await asyncio.gather(
            *(self.call(method, params, timeout=timeout) for method, params in calls),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, VdsmCallError):
                raise outcome
        return list(outcomes)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
