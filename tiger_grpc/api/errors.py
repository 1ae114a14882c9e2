"""The one status table, and the typed errors that carry a status.

Every layer raises these: the engine and the servicer (which maps a status to its
gRPC code), the gateway (gRPC code -> HTTP status), the Python client (gRPC code ->
error class) and the command line (HTTP status -> error class) all read `Status`.
"""

from __future__ import annotations

import enum
from typing import Any


class Status(enum.Enum):
    """Every gRPC status code, named as gRPC names it, with (its number, the HTTP
    status the gateway answers with). Codes Tiger does not send answer 500."""

    OK = (0, 200)
    CANCELLED = (1, 500)
    UNKNOWN = (2, 500)
    INVALID_ARGUMENT = (3, 400)
    DEADLINE_EXCEEDED = (4, 504)
    NOT_FOUND = (5, 404)
    ALREADY_EXISTS = (6, 409)
    PERMISSION_DENIED = (7, 403)
    RESOURCE_EXHAUSTED = (8, 429)
    FAILED_PRECONDITION = (9, 500)
    ABORTED = (10, 500)
    OUT_OF_RANGE = (11, 400)
    UNIMPLEMENTED = (12, 500)
    INTERNAL = (13, 500)
    UNAVAILABLE = (14, 503)
    DATA_LOSS = (15, 500)
    UNAUTHENTICATED = (16, 401)

    @property
    def http_status(self) -> int:
        return self.value[1]

    @property
    def grpc_code(self) -> Any:
        """The `grpc.StatusCode` of this status (grpc is imported on first use)."""
        import grpc

        return grpc.StatusCode[self.name]

    @classmethod
    def of_grpc(cls, code: Any) -> Status:
        """The status of a `grpc.StatusCode`."""
        return cls.__members__.get(getattr(code, "name", ""), cls.UNKNOWN)

    @classmethod
    def of_http(cls, status: int) -> Status:
        """What an HTTP answer stands for: the first status of the table that answers
        with it (a 500 is INTERNAL), 413 (a body over the limit) a bad argument, and
        UNKNOWN for the rest."""
        if status == 413:
            return cls.INVALID_ARGUMENT
        if status == 500:
            return cls.INTERNAL
        return next((s for s in cls if s.http_status == status), cls.UNKNOWN)


class TigerError(Exception):
    """An error whose message is safe and useful to show to the caller."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str, status: Any = None) -> None:
        """`status`: a `Status`, or a `grpc.StatusCode`; the class's own if None."""
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = (
                status if isinstance(status, Status) else Status.of_grpc(status)
            )

    @property
    def code(self) -> Any:
        """The gRPC status code (`grpc.StatusCode`)."""
        return self.status.grpc_code


class InvalidArgumentError(TigerError):
    status = Status.INVALID_ARGUMENT


class AuthenticationError(TigerError):
    status = Status.UNAUTHENTICATED


class PermissionDeniedError(TigerError):
    status = Status.PERMISSION_DENIED


class NotFoundError(TigerError):
    status = Status.NOT_FOUND


class AlreadyExistsError(TigerError):
    status = Status.ALREADY_EXISTS


class OverloadedError(TigerError):
    """The server is at capacity (or already training): retry shortly."""

    status = Status.RESOURCE_EXHAUSTED


class UnavailableError(TigerError):
    status = Status.UNAVAILABLE


class DeadlineExceededError(TigerError):
    status = Status.DEADLINE_EXCEEDED


class StreamError(TigerError):
    """The stream started, then failed: the server sent an `error` chunk."""

    status = Status.INTERNAL


_BY_STATUS: dict[Status, type[TigerError]] = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        AuthenticationError,
        NotFoundError,
        AlreadyExistsError,
        OverloadedError,
        UnavailableError,
        DeadlineExceededError,
    )
}


def error_for(status: Status, message: str) -> TigerError:
    """The typed error of a status, as the client and the command line raise it."""
    return _BY_STATUS.get(status, TigerError)(message, status)
