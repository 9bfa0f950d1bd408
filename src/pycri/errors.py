"""Errors that the CRI services raise, each carrying the gRPC status code kubelet expects.

Service code raises these (``raise NotFound(f"container {id} not found")``); the gRPC seam
(``pycri.api.server``) turns them, containerd's errors and timeouts into statuses, so no
service module ever talks to a grpc context.
"""

from __future__ import annotations

import grpc

QUOTE_LIMIT = 128


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters with the full length
    said: a value from a request may be megabytes long, and must not come back whole."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class CRIError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CRIError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CRIError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CRIError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CRIError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(CRIError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(CRIError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(CRIError):
    code = grpc.StatusCode.INTERNAL


class Unimplemented(CRIError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(CRIError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CRIError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DataLoss(CRIError):
    """Content is corrupted: bytes that do not match the digest naming them."""

    code = grpc.StatusCode.DATA_LOSS
