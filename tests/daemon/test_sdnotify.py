"""sd_notify and sd_listen_fds by hand: datagrams on a real socket, the environment rules."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from daemon.sdnotify import Notifier, listen_fds


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096)
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


def test_notify_sends_one_datagram_of_lines(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify"))
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert notifier.send(READY=1, STATUS="3 jobs running")
        assert receive(server) == {"READY": "1", "STATUS": "3 jobs running"}
        notifier.close()


def test_notify_abstract_socket() -> None:
    name = f"taskmgrd-test-{uuid.uuid4()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send(STOPPING=1)
        assert receive(server) == {"STOPPING": "1"}
        notifier.close()


def test_without_a_manager_nothing_is_sent(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).send(READY=1)
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.send(READY=1)  # logged, not raised: the daemon keeps running


def test_watchdog_only_for_this_process() -> None:
    me = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_seconds == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}).watchdog_seconds == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_seconds is None
    assert Notifier({}).watchdog_seconds is None


def test_listen_fds_are_for_the_named_pid_only_and_consumed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "api", "PATH": "/bin"}
    assert listen_fds(env) == []
    assert env == {"PATH": "/bin"}, "a child must not take the variables for its own"
    assert listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}) == []
    assert listen_fds({}) == []
