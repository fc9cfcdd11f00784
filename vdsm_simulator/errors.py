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


# ---------------------------------------------------------------------------------------------
# Base styles. VDSM formats messages three ways; the class a VDSM error derives from decides
# which one, so each simulated error derives from the matching base below.
# ---------------------------------------------------------------------------------------------


class PlainError(VdsmError):
    """VDSM's VdsmException: the message is the bare text, whatever the arguments."""

    @property
    def message(self) -> str:
        return self.msg


class ContextError(VdsmError):
    """VDSM's ContextException: `"<msg>: {context dict}"`, or the bare text without context."""

    def __init__(self, reason: str | None = None, **context: Any) -> None:
        super().__init__()
        self.context: dict[str, Any] = dict(context)
        if reason:
            self.context["reason"] = reason

    @property
    def message(self) -> str:
        return f"{self.msg}: {self.context}" if self.context else self.msg


class StorageException(VdsmError):
    """Marks storage errors: a task that fails with one reports the error's own code.

    Any other exception in a task job is reported with code 100 (VDSM `Task._run`).
    """

    code = 200
    msg = "General Storage Exception"


# --- lib/vdsm/common/exception.py: VdsmException (plain) ------------------------------------


class RecoveryInProgress(PlainError):  # any verb while VDSM starts or recovers
    code = 99
    msg = "Recovering from crash or Initializing"


class VMExists(PlainError):
    code = 4
    msg = "Virtual machine already exists"


class MigrationError(PlainError):
    code = 12
    msg = "Fatal error during migration"


class MigrationCancelationFailed(PlainError):  # VM.migrateCancel with no migration running
    code = 47
    msg = "Migration not in progress"


class MigrationNotInProgress(PlainError):  # errCode 'migNotInProgress'
    code = 81
    msg = "Migration not in progress"


# Host jobs: jobs.py raises its own ClientError and answers with response.error(name), so the
# wire text is the plain VdsmException text below, never the "Job %r ..." detail.
class NoSuchJob(PlainError):
    code = 66
    msg = "Job Id does not exists"


class JobNotDone(PlainError):
    code = 68
    msg = "Job status is not done"


class JobExists(PlainError):
    code = 69
    msg = "Job id already exists"


class AbortNotSupported(PlainError):
    code = 80
    msg = "Job does not support aborting"


class JobNotActive(PlainError):
    code = 84
    msg = "Job is not active"


# --- lib/vdsm/common/exception.py: ContextException -----------------------------------------


class NoSuchVM(ContextError):  # API raises NoSuchVM(vmId=<id>)
    code = 1
    msg = "Virtual machine does not exist"


class MigrationInProgress(ContextError):
    code = 51
    msg = "Command not supported during migration"


# --- lib/vdsm/common/exception.py: GeneralException -----------------------------------------


class GeneralException(VdsmError):
    code = 100
    msg = "General Exception"


class ActionStopped(VdsmError):  # raised by an aborted qemu-img/zeroing operation
    code = 443
    msg = "Action was stopped"


# --- lib/vdsm/storage/exception.py: task errors (GeneralException, not storage) -------------


class InvalidTask(VdsmError):
    code = 400
    msg = "Task invalid"


class UnknownTask(VdsmError):
    code = 401
    msg = "Task id unknown"


class TaskClearError(VdsmError):
    code = 402
    msg = "Could not clear task"


class TaskNotFinished(VdsmError):
    code = 403
    msg = "Task not finished"


class InvalidTaskType(VdsmError):
    code = 404
    msg = "Invalid task type"


class AddTaskError(VdsmError):
    code = 405
    msg = "TaskManager error, unable to add task"


class TaskInProgress(VdsmError):
    code = 406
    msg = "Running Task in progress"
    value: Any

    def __init__(self, sp_uuid: str, task: str) -> None:
        super().__init__()
        self.value = f"Pool {sp_uuid} task {task}"


class TaskMetaDataSaveError(VdsmError):
    code = 407
    msg = "Can't save Task Metadata"


class TaskMetaDataLoadError(VdsmError):
    code = 408
    msg = "Can't load Task Metadata"


class TaskDirError(VdsmError):
    code = 409
    msg = "can't find/access task dir"


class TaskStateError(VdsmError):
    code = 410
    msg = "Operation is not allowed in this task state"


class TaskAborted(VdsmError):
    """The value is one string, so the message reads `Task is aborted: 'value=X abortedcode=N'`."""

    code = 411
    msg = "Task is aborted"
    value: Any

    def __init__(self, value: Any, abortedcode: int = 411) -> None:
        super().__init__()
        self.value = f"value={value} abortedcode={abortedcode}"
        self.abortedcode = abortedcode


class UnmanagedTask(VdsmError):
    code = 412
    msg = "Operation can't be performed on unmanaged task"


class TaskPersistError(VdsmError):
    code = 413
    msg = "Can't persist task"


class InvalidJob(VdsmError):
    code = 420
    msg = "Job is invalid"


class InvalidRecovery(VdsmError):
    code = 430
    msg = "Recovery is invalid"


class InvalidTaskMng(VdsmError):
    code = 440
    msg = "invalid Task Manager"


class TaskStateTransitionError(VdsmError):
    code = 441
    msg = "cannot move task to requested state"


class TaskHasRefs(VdsmError):
    code = 442
    msg = "operation cannot be performed - task has active references"


class ResourceTimeout(VdsmError):  # resource lock not granted in time (default 120 s)
    code = 851
    msg = "Resource timeout"


class InvalidParameterException(VdsmError):
    """The value is one string `name=value` or `name=value (reason)`."""

    code = 1000
    msg = "Invalid parameter"
    value: Any

    def __init__(self, name: str, value: Any, reason: str | None = None) -> None:
        super().__init__()
        self.value = f"{name}={value}" if reason is None else f"{name}={value} ({reason})"


# --- lib/vdsm/storage/exception.py: storage errors ------------------------------------------


class VolumeDoesNotExist(StorageException):
    code = 201
    msg = "Volume does not exist"


class IncorrectFormat(StorageException):
    code = 202
    msg = "Incorrect Volume format"


class VolumeGeneralException(VdsmError):
    """Not a StorageException in VDSM: a task failing with one reports code 100."""

    code = 4000
    msg = "Volume exception"
    value: Any

    def __init__(self, volume: Any, *args: Any) -> None:
        super().__init__()
        sd, img, vol = (getattr(volume, a, None) for a in ("sdUUID", "imgUUID", "volUUID"))
        if None in (sd, img, vol):
            value = [repr(volume)]
        else:
            value = [f"sdUUID: {sd}", f"imgUUID: {img}", f"volUUID: {vol}"]
        self.value = value + list(args)


class VolumeIsBusy(VolumeGeneralException):
    code = 203
    msg = "Volume is busy"


class VolumeImageHasChildren(VolumeGeneralException):
    code = 204
    msg = "Cannot delete volume which has children (non-ethical)"


class VolumeCreationError(StorageException):
    code = 205
    msg = "Error creating a new volume"


class VolumeExtendingError(StorageException):
    code = 206
    msg = "Error extending volume"


class VolumeAlreadyExists(StorageException):
    code = 212
    msg = "Volume already exists"


class IncorrectType(StorageException):
    code = 231
    msg = "Incorrect Volume Preallocate Type"


class CannotDeleteVolume(StorageException):
    code = 222
    msg = "Volume deletion error"


class CannotDeleteSharedVolume(StorageException):
    code = 223
    msg = "Shared Volume cannot be deleted"


class MoveImageError(StorageException):
    code = 253
    msg = "Error moving image"


class ImageDeleteError(StorageException):
    code = 256
    msg = "Could not remove all image's volumes"


class CopyImageError(StorageException):
    code = 261
    msg = "low level Image copy failed"


class ImageIsNotLegalChain(StorageException):
    code = 262
    msg = "Image is not a legal chain"


class ImageDoesNotExistInSD(StorageException):
    code = 268
    msg = "Image does not exist in domain"
    value: Any

    def __init__(self, img_uuid: str, sd_uuid: str) -> None:
        super().__init__()
        self.value = f"image={img_uuid}, domain={sd_uuid}"


class StoragePoolUnknown(StorageException):
    code = 309
    msg = "Unknown pool id, pool not connected"


class StoragePoolNotConnected(StorageException):
    code = 313
    msg = "Storage pool not connected"


class ImagesNotSupportedError(StorageException):
    code = 329
    msg = "This domain does not support images"


class StorageDomainNotInPool(StorageException):
    code = 353
    msg = "Storage domain not in pool"
    value: Any

    def __init__(self, sp_uuid: str, sd_uuid: str) -> None:
        super().__init__()
        self.value = f"domain={sd_uuid}, pool={sp_uuid}"


class StorageDomainDoesNotExist(StorageException):
    code = 358
    msg = "Storage domain does not exist"


# --- lib/vdsm/storage/exception.py: SPM errors ----------------------------------------------


class SpmStartError(StorageException):
    code = 650
    msg = "Error starting SPM"


class AcquireLockFailure(StorageException):
    code = 651
    msg = "Cannot obtain lock"
    value: Any

    def __init__(self, id: Any, rc: Any, out: Any, err: Any) -> None:
        super().__init__()
        self.value = f"id={id}, rc={rc}, out={out}, err={err}"


class SpmParamsMismatch(StorageException):
    code = 652
    msg = "Pool previous lver/id don't match request"
    value: Any

    def __init__(self, oldlver: Any, oldid: Any, prev_lver: Any, prev_id: Any) -> None:
        super().__init__()
        self.value = (
            f"expected previd:{oldid} lver:{oldlver} "
            f"got request for previd:{prev_id} lver:{prev_lver}"
        )


class SpmStopError(StorageException):
    code = 653
    msg = "Error stopping SPM, SPM has unfinished task(s)"
    value: Any

    def __init__(self, sp_uuid: str, running_task: str | None = None) -> None:
        super().__init__()
        self.value = f"spUUID={sp_uuid}, task={running_task}"


class SpmStatusError(StorageException):
    code = 654
    msg = "Not SPM"


class IsSpm(StorageException):
    code = 656
    msg = "Operation not allowed while SPM is active"


class NotSpmSecured(PlainError):
    """A secured StoragePool method called on a non-SPM: VDSM's SecureError, which the storage
    dispatcher maps to (654, "Not SPM") with no value (storage/exception.py ERROR_MAP)."""

    code = 654
    msg = "Not SPM"


class GenerationMismatch(StorageException):
    code = 911
    msg = "The provided generation does not match the actual generation"
    value: Any

    def __init__(self, requested: Any, actual: Any) -> None:
        super().__init__()
        self.value = f"requested={requested}, actual={actual}"
