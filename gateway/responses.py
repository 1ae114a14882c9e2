"""Answering HTTP: JSON errors, and a server-streaming gRPC call turned into NDJSON
chunks or one JSON object."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from aiohttp import web

from tiger_grpc.api.errors import Status
from tiger_grpc.api.events import Failure, Imported, Stop, Trained
from tiger_grpc.api.wire import event_from_pb

from .chunks import error_message, event_to_json, retry_after

NDJSON = "application/x-ndjson"
RETRY_AFTER_S = "1"


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"type": "error", "message": message}, status=status, headers=headers or None
    )


def rpc_error_response(exc: grpc.aio.AioRpcError) -> web.Response:
    status = Status.of_grpc(exc.code())
    headers = {}
    if status is Status.RESOURCE_EXHAUSTED:  # a slot frees up as any stream ends
        headers["Retry-After"] = retry_after(exc, RETRY_AFTER_S)
    return error_response(status.http_status, error_message(exc), **headers)


def json_response(obj: dict[str, Any]) -> web.Response:
    return web.json_response(obj, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _line(obj: dict[str, Any]) -> bytes:
    return (
        json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"
    ).encode()


async def respond(
    request: web.Request,
    call: Any,
    stream: bool,
    collect: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> web.StreamResponse:
    """Answers a server-streaming call: an HTTP error before its first chunk, then
    NDJSON (`stream`), or the object `collect` makes of the chunks (an HTTP error
    of the failure's status if they end with one); the call is cancelled if we stop
    early."""
    try:
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc)
        if not stream:
            events = [event async for event in _events(call, first)]
            if isinstance(failure := events[-1], Failure):
                return failure_response(failure)
            return json_response(collect([event_to_json(e) for e in events]))
        response = web.StreamResponse(
            headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        async with contextlib.aclosing(_events(call, first)) as events_:
            async for event in events_:
                await response.write(_line(event_to_json(event)))
        await response.write_eof()
        return response
    finally:
        if not call.done():  # the client left, or we stopped early: free the engine
            call.cancel()


def failure_response(failure: Failure) -> web.Response:
    """A stream that failed before anything was sent: its status as HTTP's."""
    headers = {}
    if failure.status is Status.RESOURCE_EXHAUSTED:
        headers["Retry-After"] = RETRY_AFTER_S
    return error_response(failure.status.http_status, failure.message, **headers)


async def _events(call: Any, first: Any) -> AsyncIterator[Any]:
    """The events of a call, ending with exactly one `Stop` (or a training's or an
    import's end) or one `Failure`."""
    chunk = first
    try:
        while chunk is not grpc.aio.EOF:
            event = event_from_pb(chunk)
            yield event
            if isinstance(event, Stop | Trained | Imported | Failure):
                # Read the call's end too, so it completes rather than being
                # cancelled by the cleanup below (the server counts it as OK).
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call.read()
                return
            chunk = await call.read()
    except grpc.aio.AioRpcError as exc:
        yield Failure(error_message(exc), Status.of_grpc(exc.code()))
        return
    yield Failure("the backend ended the stream without a stop chunk")
