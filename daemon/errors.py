"""Errors the daemon reports to its clients, each with an HTTP status and a stable code.

The API turns any `DaemonError` into `{"error": {"code", "message"}}` with `status`; anything else
is a bug and becomes a 500 with the exception logged (and the request changes nothing).
"""

from __future__ import annotations

from typing import ClassVar


class DaemonError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DaemonError):
    status = 400
    code = "bad_request"


class InvalidParams(BadRequest):
    code = "invalid_params"


class UnknownAction(BadRequest):
    code = "unknown_action"


class Forbidden(DaemonError):
    status = 403
    code = "forbidden"


class NotFound(DaemonError):
    status = 404
    code = "not_found"


class Conflict(DaemonError):
    status = 409
    code = "conflict"


class Locked(Conflict):
    code = "locked"


class TooLarge(DaemonError):
    status = 413
    code = "too_large"


class RateLimited(DaemonError):
    status = 429
    code = "rate_limited"


class Unavailable(DaemonError):
    status = 503
    code = "unavailable"
