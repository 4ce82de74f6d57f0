"""The one family of errors that carry a TF Serving status, each type naming its codes once.

A failure that crosses TF Serving's API, on the server's side or the client's,
is a :class:`ServingError` subclass: the type says the gRPC status code and the
HTTP status the REST API answers with (TF Serving's ``ToHTTPStatusCode``), so
callers branch on ``except errors.Unavailable`` or ``error.code``, never on a
message's text. The server raises them and its gRPC and REST adapters map them
once; the client raises them with the ``target`` the RPC went to.

Usage::

    from fmnist.common import errors

    raise errors.InvalidArgument("Expected Tensor shape: [batch_size num_classes] but got [3]")
    raise errors.from_code(rpc_error.code(), rpc_error.details(), target="localhost:8500")
    raise errors.from_code(errors.status_code(op_error.error_code), op_error.message)   # a TensorFlow error

Thread safety: the classes are immutable; instances are raised, not shared.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

import grpc


class ServingError(Exception):
    """A failure with the status TF Serving answers it with.

    Args:
        details: what went wrong, in TF Serving's words where it has words for it.
        target: the server an RPC went to, on the client's side; ``None`` on the server's.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    http_status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, details: str, *, target: str | None = None):
        self.details = details
        self.target = target
        super().__init__(f"{target}: {self.code.name}: {details}" if target else details)


class Unknown(ServingError):
    pass


class Cancelled(ServingError):
    code = grpc.StatusCode.CANCELLED


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = HTTPStatus.BAD_REQUEST


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = HTTPStatus.GATEWAY_TIMEOUT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = HTTPStatus.NOT_FOUND


class AlreadyExists(ServingError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = HTTPStatus.CONFLICT


class PermissionDenied(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = HTTPStatus.FORBIDDEN


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = HTTPStatus.TOO_MANY_REQUESTS


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = HTTPStatus.BAD_REQUEST


class Aborted(ServingError):
    code = grpc.StatusCode.ABORTED
    http_status = HTTPStatus.CONFLICT


class OutOfRange(ServingError):
    code = grpc.StatusCode.OUT_OF_RANGE
    http_status = HTTPStatus.BAD_REQUEST


class Unimplemented(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = HTTPStatus.NOT_IMPLEMENTED


class Internal(ServingError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = HTTPStatus.SERVICE_UNAVAILABLE


class DataLoss(ServingError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = HTTPStatus.UNAUTHORIZED


_BY_CODE: dict[grpc.StatusCode, type[ServingError]] = {
    cls.code: cls for cls in ServingError.__subclasses__() if cls is not Unknown
} | {grpc.StatusCode.UNKNOWN: Unknown}


def from_code(code: grpc.StatusCode, details: str, *, target: str | None = None) -> ServingError:
    """The error of ``code``'s type (``Unknown`` for OK or a code TF Serving never answers with)."""
    return _BY_CODE.get(code, Unknown)(details, target=target)


_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status code numbered ``number``: TensorFlow's (absl's) error codes share gRPC's numbering,
    so an ``OpError.error_code`` or a ``StatusProto.error_code`` maps by number (UNKNOWN for none)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def one_line(text: str | None) -> str:
    """A server's message as one line: TF's op errors span several, and may end in spaces; logs and CLIs want
    one."""
    return " ".join((text or "").split())
