"""Running the gRPC calls behind one OpenAI request (one per prompt), and reading
their events as they come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from tiger_grpc.api.errors import Status
from tiger_grpc.api.events import Failure
from tiger_grpc.api.wire import event_from_pb

from ..chunks import error_message

_END = object()


async def first_chunks(calls: list[Any]) -> list[Any]:
    """Each call's first chunk: an error before it is raised (an HTTP error), and
    the other calls are cancelled."""
    try:
        return list(await asyncio.gather(*(call.read() for call in calls)))
    except BaseException:
        cancel(calls)
        raise


def cancel(calls: list[Any]) -> None:
    for call in calls:
        if not call.done():
            call.cancel()


async def events(calls: list[Any], firsts: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """(position of the call, event), as they come, until every call has ended; a
    failure of any ends it with that `Failure`. Unfinished calls are cancelled
    when the reader stops early (the client left)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    readers = [
        asyncio.ensure_future(_read(i, call, first, queue))
        for i, (call, first) in enumerate(zip(calls, firsts, strict=True))
    ]
    running = len(calls)
    try:
        while running:
            item = await queue.get()
            if item is _END:
                running -= 1
                continue
            yield item
            if isinstance(item[1], Failure):
                return
    finally:
        for reader in readers:
            reader.cancel()
        cancel(calls)


async def _read(
    position: int, call: Any, first: Any, queue: asyncio.Queue[Any]
) -> None:
    chunk = first
    try:
        while chunk is not grpc.aio.EOF:
            await queue.put((position, event_from_pb(chunk)))
            chunk = await call.read()
    except grpc.aio.AioRpcError as exc:
        status = Status.of_grpc(exc.code())
        await queue.put((position, Failure(error_message(exc), status)))
    finally:
        with contextlib.suppress(RuntimeError):
            queue.put_nowait(_END)
