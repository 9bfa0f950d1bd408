"""Python exceptions for containerd's gRPC errors.

containerd reports its error classes (errdefs) as gRPC status codes. pycri's code reasons in
those classes (``except NotFoundError``), never in raw gRPC codes, so the mapping lives here.
``UnavailableError`` is special: it means "the connection to containerd is gone", which the
exit monitors must never mistake for an exit (reference §4.6).
"""

from __future__ import annotations

import grpc


class ContainerdError(Exception):
    """A containerd call failed; ``code`` is the gRPC status code it answered with."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class NotFoundError(ContainerdError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ContainerdError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(ContainerdError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgumentError(ContainerdError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnavailableError(ContainerdError):
    """containerd cannot be reached (or the connection dropped mid-call)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ContainerdError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(ContainerdError):
    code = grpc.StatusCode.CANCELLED


_BY_CODE: dict[grpc.StatusCode, type[ContainerdError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(err: grpc.aio.AioRpcError, *, method: str) -> ContainerdError:
    """Translate a grpc.aio error into the matching ``ContainerdError`` subclass."""
    code = err.code()
    cls = _BY_CODE.get(code, ContainerdError)
    return cls(f"containerd {method}: {err.details() or code.name}", code=code)


def is_connection_loss(err: BaseException) -> bool:
    """True when the error says containerd went away rather than answering."""
    return isinstance(err, (UnavailableError, CancelledError))
