"""Errors a VDSM call can end with, as the daemon sees them.

A VDSM error object carries VDSM's own code (401, 654, ...); each code the daemon acts on has a
class of its own so callers can `except UnknownTask` instead of comparing numbers. Failures on
the client side (timeout, lost connection) use 5022, the code the engine's Java client uses for
"Message timeout which can be caused by communication issues".
"""

from __future__ import annotations

from typing import ClassVar


class VdsmCallError(Exception):
    """A call that VDSM answered with an error, or that never got an answer."""

    code: ClassVar[int] = 0

    def __init__(self, code: int, message: str, method: str = "", host: str = "") -> None:
        super().__init__(f"{method or 'call'} on {host or 'host'}: [{code}] {message}")
        self.vdsm_code = code
        self.message = message
        self.method = method
        self.host = host


class RecoveryInProgress(VdsmCallError):
    code = 99  # VDSM is starting; retry later


class GeneralError(VdsmCallError):
    code = 100


class UnknownTask(VdsmCallError):
    code = 401


class TaskNotFinished(VdsmCallError):
    code = 403


class TaskStateError(VdsmCallError):
    code = 410


class TaskAborted(VdsmCallError):
    code = 411


class TaskStateTransitionError(VdsmCallError):
    code = 441


class TaskHasRefs(VdsmCallError):
    code = 442


class NotSpm(VdsmCallError):
    code = 654


class IsSpm(VdsmCallError):
    code = 656


class ProtocolError(VdsmCallError):
    """JSON-RPC protocol errors (-32700 .. -32603): a bug on one side, never retried."""


class ClientTimeout(VdsmCallError):
    code = 5022

    @classmethod
    def of_call(cls, method: str, host: str) -> ClientTimeout:
        """The engine's own text for a call that got no answer in time."""
        text = "Message timeout which can be caused by communication issues"
        return cls(5022, text, method, host)


class ConnectionLost(VdsmCallError):
    """The connection broke or could not be made; pending calls fail with this (code 5022)."""

    code = 5022


_BY_CODE: dict[int, type[VdsmCallError]] = {
    cls.code: cls
    for cls in (
        RecoveryInProgress,
        GeneralError,
        UnknownTask,
        TaskNotFinished,
        TaskStateError,
        TaskAborted,
        TaskStateTransitionError,
        TaskHasRefs,
        NotSpm,
        IsSpm,
    )
}


def error_for(code: int, message: str, method: str = "", host: str = "") -> VdsmCallError:
    """The exception for a VDSM error object."""
    if -32768 <= code <= -32000:
        return ProtocolError(code, message, method, host)
    cls = _BY_CODE.get(code, VdsmCallError)
    return cls(code, message, method, host)
