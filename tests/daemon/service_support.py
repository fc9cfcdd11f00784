"""`taskmgrd run` as a real process, the way systemd runs it: a NOTIFY_SOCKET datagram socket to
read its sd_notify messages from, and optionally a listening socket passed as fd 3 with
LISTEN_FDS/LISTEN_PID. The simulator runs in the test's own event loop (tests/daemon/stack.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemon import test_crash

ROOT = test_crash.ROOT
TERMINAL = test_crash.TERMINAL

# How systemd hands over a listening socket: fd 3, LISTEN_FDS=1, and LISTEN_PID set to the pid
# of the process it execs (exec keeps the pid, so this small launcher can set its own).
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="api")
os.execv(sys.argv[2], sys.argv[2:])
"""


def config_text(pool: str, hosts: dict[str, int], *, log_level: str = "INFO") -> str:
    """A configuration with fast polling, as the stack harness uses, and these hosts."""
    entries = "".join(
        f'[[hosts]]\nname = "{name}"\naddress = "127.0.0.1"\nport = {port}\npool = "{pool}"\n\n'
        for name, port in sorted(hosts.items())
    )
    return f"""
[daemon]
synchronous = "NORMAL"
log_level = "{log_level}"

[polling]
fast_interval = 0.02
idle_interval = 0.2
monitor_interval = 0.1
failures_before_non_responsive = 2
call_timeout = 5.0
spm_start_timeout = 10.0

{entries}"""


class NotifyListener:
    """The NOTIFY_SOCKET end of sd_notify: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    async def next(self, deadline: float = 20.0) -> dict[str, str]:
        async with asyncio.timeout(deadline):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append(message)
        return message

    async def until(self, key: str, deadline: float = 20.0) -> dict[str, str]:
        """The next message carrying `key` (messages before it are kept in `received`)."""
        async with asyncio.timeout(deadline):
            while True:
                message = await self.next(deadline)
                if key in message:
                    return message

    def close(self) -> None:
        self.sock.close()


class DaemonProc(test_crash.DaemonProc):
    """test_crash's process handle, with the waits these tests need."""

    async def get(self, path: str) -> Any:
        status, doc = await self.request("GET", path)
        assert status == 200, doc
        return doc

    async def wait_api(self, deadline: float = 20.0) -> None:
        async with asyncio.timeout(deadline):
            while True:
                assert self.proc.returncode is None, f"taskmgrd exited: {self.log.read_text()}"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    status, _ = await self.request("GET", "/health")
                    if status == 200:
                        return
                await asyncio.sleep(0.05)  # polling the socket answering, deadline above

    async def wait_job(
        self, job_id: str, statuses: set[str], deadline: float = 30.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(deadline):
            while True:
                view = await self.get(f"/jobs/{job_id}")
                if view["status"] in statuses:
                    return dict(view)
                await asyncio.sleep(0.02)  # polling the API for a condition, deadline above

    async def stop(self, sig: int = signal.SIGTERM, deadline: float = 25.0) -> int:
        """Send `sig` and wait for the exit; the exit status."""
        self.proc.send_signal(sig)
        async with asyncio.timeout(deadline):
            return await self.proc.wait()

    async def close(self) -> None:
        await self.http.close()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def spawn(
    tmp_path: Path,
    config: Path,
    *,
    name: str = "taskmgrd",
    notify: NotifyListener | None = None,
    inherited: socket.socket | None = None,
    env: dict[str, str] | None = None,
) -> DaemonProc:
    """Start `taskmgrd run`; with `inherited`, as systemd's socket activation starts it."""
    api = tmp_path / "api.sock" if inherited is None else Path(inherited.getsockname())
    log = tmp_path / f"{name}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    environ.pop("JOURNAL_STREAM", None)
    if notify is not None:
        environ["NOTIFY_SOCKET"] = str(notify.path)
    environ.update(env or {})
    command = [sys.executable, "-m", "daemon.service", "run", "--config", str(config)]
    command += ["--socket", str(api), "--db", str(tmp_path / "taskmgrd.db")]
    pass_fds: tuple[int, ...] = ()
    if inherited is not None:
        command = [sys.executable, "-c", ACTIVATE, str(inherited.fileno()), *command]
        pass_fds = (inherited.fileno(),)
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=pass_fds,
        )
    return DaemonProc(proc, api, log)


def tcp_listeners(pid: int) -> list[str]:
    """The local addresses of TCP sockets in LISTEN state that process `pid` holds (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                    listening.append(cols[1])
    return listening
