"""API fuzzing from the served OpenAPI description (schemathesis): over a thousand generated
requests, valid and invalid, against the real socket. After every one: no 5xx, the answer is in
the documented shape, and when it was refused (4xx) nothing changed, in memory or on disk. At the
end the daemon still answers.

schemathesis speaks HTTP over TCP (requests) and aiohttp offers no in-process transport, so the
test forwards a local TCP port to the unix socket: the daemon sees a real unix-socket peer (this
process) with its credentials, and every route, writes included, is reachable. The event stream
(endless by design) is left out here; tests/daemon/test_events.py covers it, bad input included.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from daemon.api.limits import ApiLimits  # noqa: E402
from tests.daemon.api_support import ApiDaemon, serve, shutdown, snapshot  # noqa: E402
from tests.daemon.test_api import HOST  # noqa: E402

T = TypeVar("T")
EXAMPLES = 75  # per operation, mode and binding: ~21 passes, some exhaust early
MINIMUM_REQUESTS = 1000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class Background:
    """The daemon's event loop in a thread: schemathesis and hypothesis are synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def forward_tcp_to_unix(socket_path: Path) -> asyncio.Server:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unix_reader, unix_writer = await asyncio.open_unix_connection(str(socket_path))
        await asyncio.gather(pipe(reader, unix_writer), pipe(unix_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def finished_job(daemon: ApiDaemon) -> str:
    job = await daemon.executor.submit("RefreshHost", {"host": HOST["name"]}, owner=0)
    await snapshot(daemon)  # settles: the job has ended
    return job.id


def fuzzer(strategy: Any, exercise: Any) -> Any:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a CI failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        exercise(case)

    return fuzz


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Background, ApiDaemon, str]]:
    bg = Background()
    unlimited = ApiLimits(rate_per_second=1e9, burst=1e9)
    daemon, server = bg.run(serve(tmp_path / "taskmgrd.db", limits=unlimited))
    forwarder = bg.run(forward_tcp_to_unix(daemon.socket))
    port = forwarder.sockets[0].getsockname()[1]
    try:
        # one real host, so that generated jobs and host calls also find something that exists
        bg.run(daemon.hosts.add_host(HOST["name"], HOST["address"], HOST["port"], HOST["pool"]))
        yield bg, daemon, f"http://127.0.0.1:{port}"
    finally:
        forwarder.close()
        bg.run(shutdown(daemon, server))
        bg.close()


# 1,000+ requests take ~130 s of wall time on a loaded 2-core machine (the default is 120 s)
@pytest.mark.timeout(400)
def test_fuzz_the_api_from_its_openapi_description(
    served: tuple[Background, ApiDaemon, str],
) -> None:
    bg, daemon, base_url = served
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    schema = schema.exclude(path="/api/v1/events")
    session = requests.Session()
    sent: dict[str, int] = {}
    refused: dict[str, int] = {}

    state: list[Any] = []  # the settled state after the last request, while it is known

    def exercise(case: Any, label: str) -> None:
        before = state.pop() if state else bg.run(snapshot(daemon))
        response = case.call(base_url=base_url, session=session, timeout=30)
        sent[label] = sent.get(label, 0) + 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            refused[label] = refused.get(label, 0) + 1
            error = response.json()["error"]
            assert error["code"] and error["message"], response.text
            after = bg.run(snapshot(daemon))
            assert after == before, f"{label} refused yet changed state: {case.as_curl_command()}"
            state.append(after)  # unchanged: the next request starts from it

    # random ids only ever find nothing (404): a second pass binds the path to things that exist
    job_id = bg.run(finished_job(daemon))
    bound = {"id": job_id, "name": HOST["name"]}
    passes = [
        (result.ok(), mode, bind)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for bind in (False, True)
    ]
    for operation, mode, bind in passes:
        names = {p.name for p in operation.path_parameters}
        if bind and not names:
            continue
        label = f"{operation.method.upper()} {operation.path} {mode.value}" + (
            " bound" if bind else ""
        )
        try:
            strategy = operation.as_strategy(
                generation_mode=mode,
                path_parameters={n: bound[n] for n in names} if bind else None,
            )
        except Exception as e:  # an operation without inputs has no negative cases
            if mode is GenerationMode.NEGATIVE:
                continue
            raise AssertionError(f"{label}: {e}") from e

        fuzz = fuzzer(strategy, lambda case, label=label: exercise(case, label))
        try:
            fuzz()
        except Unsatisfiable:
            # no input to break (GET /health, /metrics ...): nothing negative to send
            assert mode is GenerationMode.NEGATIVE, label

    total = sum(sent.values())
    summary = ", ".join(f"{k}: {v}/{refused.get(k, 0)}" for k, v in sorted(sent.items()))
    print(f"\nfuzz: {total} requests ({sum(refused.values())} refused); sent/refused: {summary}")
    assert total >= MINIMUM_REQUESTS, summary
    assert sum(refused.values()) > total // 4, "the fuzzer should mostly probe bad input"
    health = session.get(f"{base_url}/api/v1/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
