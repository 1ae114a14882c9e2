"""One typed exception carrying its status; mapped to gRPC and HTTP at the edges."""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """What went wrong, independent of the protocol (value: the HTTP status)."""

    INVALID_ARGUMENT = 400
    UNAUTHENTICATED = 401
    NOT_FOUND = 404
    ALREADY_EXISTS = 409
    RESOURCE_EXHAUSTED = 429
    INTERNAL = 500
    UNAVAILABLE = 503

    @property
    def http_status(self) -> int:
        return self.value


class TigerError(Exception):
    """An error whose message is safe and useful to show to the caller."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(TigerError):
    status = Status.INVALID_ARGUMENT


class Unauthenticated(TigerError):
    status = Status.UNAUTHENTICATED


class NotFound(TigerError):
    status = Status.NOT_FOUND


class AlreadyExists(TigerError):
    status = Status.ALREADY_EXISTS


class Unavailable(TigerError):
    status = Status.UNAVAILABLE


class ResourceExhausted(TigerError):
    status = Status.RESOURCE_EXHAUSTED
