"""Simulator load benchmark (issue 2): can `vdsm-sim` answer the daemon's polling fast enough?

The daemon polls every host with ``Host.getAllTasksStatuses``; if the simulator cannot keep up,
every daemon benchmark measures the simulator instead of the daemon. This benchmark:

1. starts ``vdsm-sim --hosts N --pools N`` as a subprocess (every host SPM of its own pool, so
   getAllTasksStatuses answers everywhere instead of 654);
2. populates T tasks per host with ``Volume.create`` through the daemon's own STOMP client:
   half of them finish first (short jobs), then the control API's gate holds every host's later
   jobs at their end, so the other half stay ``running``. Both kinds are listed until cleared, and
   a poller in production sees a mix, so the replies have the realistic shape and size;
3. forks a separate load-generator process (multiprocessing, uvloop) that opens one STOMP
   connection per host (CONNECT ``host`` header) and keeps exactly one call in flight on each:
   first ``Host.ping2`` (the baseline: the protocol floor at the same concurrency, measured in
   the same run), then ``Host.getAllTasksStatuses``. Every reply is checked: its id, and for the
   statuses the exact number of tasks and of finished / running ones. A benchmark that does not
   check its answers can lie.

It prints calls/s, p50/p99 latency and the simulator's CPU use for each phase, and PASS/FAIL
against the 3,000 calls/s target; it exits non-zero only with ``--check`` (or on wrong replies).
Latency is closed-loop at full concurrency (every connection has a call in flight), so it is
mostly queueing: roughly connections / throughput.

Everything runs on 127.0.0.1, bounded in time; the simulator is stopped in every case.

    python bench/sim_load.py                 # 1,000 hosts x 20 tasks, 20 s per phase
    python bench/sim_load.py --quick         # 100 hosts, 3 s: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from benchlib import ADDRESS, control, cpu_seconds, machine, wait_listening

from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.stomp import Frame, FrameParser, encode_frame

TARGET_CALLS_PER_S = 3000
REQUESTS = "jms.topic.vdsm_requests"
RESPONSES = "jms.topic.vdsm_responses"
TASK_SECONDS = 0.3  # simulated duration of one job: the finished half is done in well under 1 s
PHASE_DRAIN_TIMEOUT = 30.0


# -- the simulator --------------------------------------------------------------------------


def start_simulator(hosts: int) -> tuple[subprocess.Popen[str], int]:
    """Start vdsm-sim and wait for its listening line; kill it if that line never comes."""
    cmd = [
        sys.executable,
        "-m",
        "vdsm_simulator.cli",
        "--port",
        "0",
        "--hosts",
        str(hosts),
        "--pools",
        str(hosts),
        "--time-scale",
        "1",
        "--task-seconds",
        str(TASK_SECONDS),
        "--task-distribution",
        "fixed",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return proc, wait_listening(proc, lambda: stop_simulator(proc))


def stop_simulator(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def runs_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's extension mapped (vdsm-sim should run on it)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "uvloop/loop." in f.read()
    except OSError:
        return False


# -- population ------------------------------------------------------------------------------


def states(statuses: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status["taskState"]] = counts.get(status["taskState"], 0) + 1
    return counts


async def populate(port: int, hosts: int, tasks: int, finished: int) -> None:
    """`finished` done tasks then `tasks - finished` held running ones on every host."""
    topology = await control(port, "GET", "/_control/topology")
    spm = {p["spm"]: p for p in topology["pools"]}
    names = [f"host{i}" for i in range(1, hosts + 1)]
    missing = [n for n in names if n not in spm]
    if missing:
        raise RuntimeError(f"hosts without a pool of their own: {missing[:5]}")
    clients = {
        n: StompRpcClient(ADDRESS, port, host_header=n, timeout=60, heartbeat_ms=0) for n in names
    }
    sem = asyncio.Semaphore(200)  # bounded connect storm

    async def create(name: str, count: int) -> None:
        pool = spm[name]
        async with sem:
            for _ in range(count):
                await clients[name].call(
                    "Volume.create",
                    {
                        "volumeID": str(uuid.uuid4()),
                        "storagepoolID": pool["id"],
                        "storagedomainID": pool["master_domain"],
                        "imageID": str(uuid.uuid4()),
                        "size": "1073741824",
                        "volFormat": "COW",
                        "preallocate": "SPARSE",
                        "diskType": "DATA",
                        "desc": "",
                        "srcImgUUID": "",
                        "srcVolUUID": "",
                    },
                )

    async def wait_states(name: str, want: dict[str, int]) -> None:
        while True:
            got = states(await clients[name].call("Host.getAllTasksStatuses"))
            if got == want:
                return
            await asyncio.sleep(0.1)

    try:
        await asyncio.gather(*(create(n, finished) for n in names))
        async with asyncio.timeout(60):
            await asyncio.gather(*(wait_states(n, {"finished": finished}) for n in names))
        for n in names:  # later jobs wait at their end: they stay "running"
            await control(port, "POST", f"/_control/hosts/{n}/hold")
        await asyncio.gather(*(create(n, tasks - finished) for n in names))
        want = {"finished": finished, "running": tasks - finished}
        want = {k: v for k, v in want.items() if v}
        async with asyncio.timeout(60):
            await asyncio.gather(*(wait_states(n, want) for n in names))
    finally:
        for c in clients.values():
            await c.close()


# -- the load generator (a separate process) -------------------------------------------------


@dataclass
class PhaseResult:
    method: str
    seconds: float
    calls: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    sim_cpu_percent: float
    gen_cpu_percent: float
    bad_replies: int
    reply_bytes: int
    bad_examples: list[str] = field(default_factory=list)


class Phase:
    """One measured window: replies are counted only between `start` and `end`."""

    def __init__(self, method: str, expect: dict[str, int] | None) -> None:
        self.method = method
        self.body_prefix = f'{{"jsonrpc": "2.0", "method": "{method}", "params": {{}}, "id": "'
        self.expect = expect  # task state counts a statuses reply must have; None: ping2
        self.start = self.end = 0.0
        self.running = False
        self.latencies: list[float] = []
        self.replies = 0  # replies received inside the window, whenever their call was sent
        self.reply_bytes = 0  # JSON bodies of those replies
        self.bad = 0
        self.bad_examples: list[str] = []

    def fail(self, text: str) -> None:
        self.bad += 1
        if len(self.bad_examples) < 5:
            self.bad_examples.append(text[:300])


class PollConnection(asyncio.Protocol):
    """One host's connection: CONNECT, SUBSCRIBE, then one call in flight at a time.

    Written against the protocol directly (shared `daemon.vdsm.stomp` codec) so that the
    generator costs as little CPU as possible and the simulator is what gets measured.
    """

    def __init__(self, host: str, ready: asyncio.Future[None]) -> None:
        self.host = host
        self.ready = ready
        self.parser = FrameParser()
        self.transport: asyncio.Transport | None = None
        self.phase: Phase | None = None
        self.idle: asyncio.Future[None] | None = None
        self.seq = 0
        self.call_id = ""
        self.sent_at = 0.0
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        headers = {"accept-version": "1.2", "host": self.host, "heart-beat": "0,0"}
        transport.write(encode_frame(Frame("CONNECT", headers)))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for frame in self.parser.feed(data):
            if frame.command == "MESSAGE":
                self.on_reply(frame.body)
            elif frame.command == "CONNECTED":
                sub = {"destination": RESPONSES, "id": f"sub-{self.host}", "ack": "auto"}
                assert self.transport is not None
                self.transport.write(encode_frame(Frame("SUBSCRIBE", sub)))
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                self.connection_lost(RuntimeError(f"{frame.command}: {frame.body[:200]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("closed by the simulator")
        if not self.ready.done():
            self.ready.set_exception(self.lost)
        if self.idle is not None and not self.idle.done():
            self.idle.set_result(None)
        if self.phase is not None and self.phase.running:
            self.phase.fail(f"{self.host}: connection lost: {self.lost}")

    def send(self) -> None:
        phase = self.phase
        assert phase is not None and self.transport is not None
        self.seq += 1
        self.call_id = f"{self.host}-{self.seq}"
        body = f'{phase.body_prefix}{self.call_id}"}}'.encode()
        self.sent_at = time.perf_counter()
        self.transport.write(
            b"SEND\ndestination:"
            + REQUESTS.encode()
            + b"\nreply-to:"
            + RESPONSES.encode()
            + b"\ncontent-length:"
            + str(len(body)).encode()
            + b"\n\n"
            + body
            + b"\0"
        )

    def start(self, phase: Phase) -> None:
        self.phase = phase
        self.idle = asyncio.get_running_loop().create_future()
        self.send()

    def on_reply(self, body: bytes) -> None:
        now = time.perf_counter()
        phase = self.phase
        if phase is None:
            return
        self.check(phase, body)
        if phase.start <= now <= phase.end:
            phase.replies += 1
            phase.reply_bytes += len(body)
            if phase.start <= self.sent_at:
                phase.latencies.append(now - self.sent_at)
        if phase.running and self.lost is None:
            self.send()
        elif self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def check(self, phase: Phase, body: bytes) -> None:
        try:
            reply = json.loads(body)
        except ValueError:
            phase.fail(f"{self.host}: not JSON: {body[:200]!r}")
            return
        if not isinstance(reply, dict) or reply.get("id") != self.call_id or "result" not in reply:
            phase.fail(f"{self.host}: unexpected reply to {self.call_id}: {body[:200]!r}")
            return
        result = reply["result"]
        if phase.expect is None:
            if result is not True:
                phase.fail(f"{self.host}: ping2 answered {result!r}")
            return
        if not isinstance(result, dict) or len(result) != sum(phase.expect.values()):
            phase.fail(f"{self.host}: expected {phase.expect} tasks, got {str(result)[:200]}")
            return
        counts: dict[str, int] = {}
        for tid, status in result.items():
            if status.get("taskID") != tid:
                phase.fail(f"{self.host}: status under {tid} is {status!r}")
                return
            state = status.get("taskState")
            counts[state] = counts.get(state, 0) + 1
        if counts != phase.expect:
            phase.fail(f"{self.host}: states {counts}, expected {phase.expect}")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_load(
    port: int,
    sim_pid: int,
    hosts: int,
    phases: list[tuple[str, dict[str, int] | None]],
    seconds: float,
    warmup: float,
) -> list[PhaseResult]:
    loop = asyncio.get_running_loop()
    conns: list[PollConnection] = []
    sem = asyncio.Semaphore(200)

    async def open_one(i: int) -> None:
        async with sem:
            ready: asyncio.Future[None] = loop.create_future()
            conn = PollConnection(f"host{i}", ready)
            await loop.create_connection(lambda: conn, ADDRESS, port)
            async with asyncio.timeout(30):
                await ready
            conns.append(conn)

    await asyncio.gather(*(open_one(i) for i in range(1, hosts + 1)))
    results: list[PhaseResult] = []
    try:
        for method, expect in phases:
            phase = Phase(method, expect)
            phase.running = True
            for conn in conns:
                conn.start(phase)
            await asyncio.sleep(warmup)
            cpu0, gen0 = cpu_seconds(sim_pid), time.process_time()
            phase.start = time.perf_counter()
            phase.end = phase.start + seconds
            await asyncio.sleep(seconds)
            elapsed = time.perf_counter() - phase.start
            cpu1, gen1 = cpu_seconds(sim_pid), time.process_time()
            phase.running = False
            async with asyncio.timeout(PHASE_DRAIN_TIMEOUT):
                await asyncio.gather(*(c.idle for c in conns if c.idle is not None))
            lat = sorted(phase.latencies)
            results.append(
                PhaseResult(
                    method=method,
                    seconds=round(elapsed, 2),
                    calls=phase.replies,
                    calls_per_s=round(phase.replies / elapsed, 1),
                    p50_ms=round(percentile(lat, 0.50) * 1000, 2),
                    p99_ms=round(percentile(lat, 0.99) * 1000, 2),
                    sim_cpu_percent=round(100 * (cpu1 - cpu0) / elapsed, 1),
                    gen_cpu_percent=round(100 * (gen1 - gen0) / elapsed, 1),
                    bad_replies=phase.bad,
                    reply_bytes=phase.reply_bytes // max(phase.replies, 1),
                    bad_examples=phase.bad_examples,
                )
            )
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    return results


def load_process(
    out: Any,
    port: int,
    sim_pid: int,
    hosts: int,
    phases: list[tuple[str, dict[str, int] | None]],
    seconds: float,
    warmup: float,
) -> None:
    """Entry point of the load-generator process; sends back its results or its error."""
    try:
        import uvloop

        results = uvloop.run(run_load(port, sim_pid, hosts, phases, seconds, warmup))
        out.send([asdict(r) for r in results])
    except BaseException as e:
        out.send(f"{type(e).__name__}: {e}")
        raise


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, help="simulated hosts and connections (1000)")
    p.add_argument("--tasks", type=int, default=20, help="tasks per host")
    p.add_argument(
        "--finished", type=int, help="of which finished (default half; the rest stay running)"
    )
    p.add_argument("--seconds", type=float, help="measured seconds per phase (20)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each phase (2)")
    p.add_argument("--repeat", type=int, default=1, help="alternate ping2/statuses phases N times")
    p.add_argument("--quick", action="store_true", help="smoke run: defaults 100 hosts, 3 s phases")
    p.add_argument("--check", action="store_true", help="exit 1 below the calls/s target")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    defaults = (100, 3.0, 0.5) if args.quick else (1000, 20.0, 2.0)
    for name, default in zip(("hosts", "seconds", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.finished is None:
        args.finished = args.tasks // 2
    if not 0 <= args.finished <= args.tasks or args.hosts < 1 or args.repeat < 1:
        p.error("need 0 <= --finished <= --tasks, --hosts >= 1, --repeat >= 1")
    return args


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    running = args.tasks - args.finished
    print(f"machine: {machine()}")
    print(
        f"simulator: {args.hosts} hosts, each SPM of its own pool; {args.tasks} tasks per host "
        f"({args.finished} finished, {running} running, held at their end by the control gate)"
    )
    t0 = time.monotonic()
    sim, port = start_simulator(args.hosts)
    try:
        loop = "uvloop" if runs_uvloop(sim.pid) else "NOT uvloop"
        print(f"started on port {port} in {time.monotonic() - t0:.1f} s ({loop}); populating...")
        t0 = time.monotonic()
        asyncio.run(populate(port, args.hosts, args.tasks, args.finished))
        print(
            f"populated {args.hosts * args.tasks} tasks in {time.monotonic() - t0:.1f} s; "
            f"load: {args.hosts} connections, one call in flight on each, "
            f"{args.warmup:g} s warm-up + {args.seconds:g} s per phase"
        )
        expect = {k: v for k, v in {"finished": args.finished, "running": running}.items() if v}
        phases = [("Host.ping2", None), ("Host.getAllTasksStatuses", expect)] * args.repeat
        ctx = multiprocessing.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        gen = ctx.Process(
            target=load_process,
            args=(send, port, sim.pid, args.hosts, phases, args.seconds, args.warmup),
            name="sim-load-generator",
        )
        gen.start()
        send.close()
        budget = 120 + len(phases) * (args.seconds + args.warmup + PHASE_DRAIN_TIMEOUT)
        if not recv.poll(budget):
            gen.kill()
            raise RuntimeError("load generator did not finish in time")
        outcome = recv.recv()
        gen.join(10)
        if isinstance(outcome, str):
            raise RuntimeError(f"load generator failed: {outcome}")
    finally:
        stop_simulator(sim)

    results = [PhaseResult(**r) for r in outcome]
    print(
        f"\n{'method':<26}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'sim CPU':>9}"
        f"{'gen CPU':>9}{'calls':>9}{'bytes':>7}{'bad':>6}"
    )
    for r in results:
        print(
            f"{r.method:<26}{r.calls_per_s:>10.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.sim_cpu_percent:>8.0f}%{r.gen_cpu_percent:>8.0f}%{r.calls:>9}{r.reply_bytes:>7}"
            f"{r.bad_replies:>6}"
        )
        for example in r.bad_examples:
            print(f"    bad reply: {example}")
    ping = median([r.calls_per_s for r in results if r.method == "Host.ping2"])
    stat_results = [r for r in results if r.method == "Host.getAllTasksStatuses"]
    rate = median([r.calls_per_s for r in stat_results])
    sim_cpu = median([r.sim_cpu_percent for r in stat_results])
    bad = sum(r.bad_replies for r in results)
    print(
        f"\nHost.getAllTasksStatuses: {rate:.0f} calls/s ({100 * rate / ping:.0f}% of the ping2 "
        f"baseline {ping:.0f} calls/s at the same concurrency); simulator CPU {sim_cpu:.0f}%, "
        f"i.e. ~{rate * 100 / max(sim_cpu, 1):.0f} calls per simulator CPU-second"
    )
    gen_cpu = max(r.gen_cpu_percent for r in results)
    if gen_cpu > 90:
        print(f"note: the load generator reached {gen_cpu:.0f}% CPU: it may be the bottleneck")
    verdict = "PASS" if rate >= TARGET_CALLS_PER_S else "FAIL"
    print(f"{verdict}: target {TARGET_CALLS_PER_S} calls/s; replies checked, {bad} wrong")
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "verdict": verdict}))
    if bad:
        return 1
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
