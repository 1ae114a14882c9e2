"""Answering an OpenAI request from its gRPC calls: an error before the first chunk
is an HTTP error in OpenAI's shape; then either one JSON object, or Server-Sent
Events exactly as the SDKs parse them (`data: {json}` lines, `: comments` for
model loading, one error event if the stream fails, `data: [DONE]` at the end)."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Protocol

import grpc
from aiohttp import web

from tiger_grpc.api.events import Failure, Info

from ..responses import json_response
from .calls import events, first_chunks
from .errors import error_object, error_response, rpc_error_response

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies pass events on as they come
}


class Shaper(Protocol):
    def start(self) -> list[dict[str, Any]]: ...

    def on_event(self, position: int, event: Any) -> list[dict[str, Any]]: ...

    def usage_chunk(self) -> dict[str, Any]: ...

    def final(self) -> dict[str, Any]: ...


def data(obj: dict[str, Any] | str) -> bytes:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def serve(
    request: web.Request,
    calls: list[Any],
    shaper: Shaper,
    stream: bool,
    include_usage: bool,
) -> web.StreamResponse:
    try:
        firsts = await first_chunks(calls)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc)
    if not stream:
        async with contextlib.aclosing(events(calls, firsts)) as answer:
            async for position, event in answer:
                if isinstance(event, Failure):
                    return error_response(event.status, event.message)
                shaper.on_event(position, event)
        return json_response(shaper.final())
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    for chunk in shaper.start():
        await response.write(data(chunk))
    async with contextlib.aclosing(events(calls, firsts)) as answer:
        async for position, event in answer:
            if isinstance(event, Failure):
                await response.write(data(error_object(event.status, event.message)))
                await response.write_eof()
                return response
            if isinstance(event, Info):  # model loading: a comment, SDKs skip it
                await response.write(f": {event.message}\n\n".encode())
            for chunk in shaper.on_event(position, event):
                await response.write(data(chunk))
    if include_usage:
        await response.write(data(shaper.usage_chunk()))
    await response.write(data("[DONE]"))
    await response.write_eof()
    return response
