"""VDSM error codes and messages, as VDSM writes them on the wire.

Two families, as in VDSM:
* `VdsmError` subclasses carry a VDSM code (401, 654, ...) and are answered as a JSON-RPC error
  object `{"code": <vdsm code>, "message": <text>}`.
* `JsonRpcError` subclasses are protocol errors (-32700 .. -32603).

Messages follow VDSM's `GeneralException.__str__`: `"<msg>: <repr(value tuple)>"`, e.g.
`Task id unknown: ('T',)`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VdsmError(Exception):
    """An error VDSM reports with its own code."""

    code: ClassVar[int] = 100
    msg: ClassVar[str] = "General Exception"

    def __init__(self, *value: Any) -> None:
        super().__init__(*value)
        self.value = value

    @property
    def message(self) -> str:
        return f"{self.msg}: {self.value!r}"

    def __str__(self) -> str:
        return self.message

    def info(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class CodedError(VdsmError):
    """An error with a code and text chosen at run time (fault injection)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self._code = code
        self._text = text

    @property
    def message(self) -> str:
        return self._text

    def info(self) -> dict[str, Any]:
        return {"code": self._code, "message": self._text}


class JsonRpcError(Exception):
    """A JSON-RPC 2.0 protocol error."""

    code: ClassVar[int] = -32603
    default_message: ClassVar[str] = "Internal JSON-RPC error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message

    def info(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class ParseError(JsonRpcError):
    code = -32700
    default_message = "Parse error"


class InvalidRequest(JsonRpcError):
    code = -32600
    default_message = "Invalid request"


class MethodNotFound(JsonRpcError):
    code = -32601
    default_message = "The method does not exist or is not available"


class InvalidParams(JsonRpcError):
    code = -32602
    default_message = "Invalid method parameter(s)"


class InternalError(JsonRpcError):
    code = -32603
    default_message = "Internal JSON-RPC error"
