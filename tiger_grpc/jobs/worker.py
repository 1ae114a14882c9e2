"""Long jobs (training, import) on a worker thread, streamed to an async caller.

The job gets `emit(event)` to send events to the caller and a `cancel` event it
checks at safe points (`runtime.ml.stop_if_cancelled` raises `Cancelled`); a caller
that stops listening sets `cancel`, so the job stops at the next such point and
cleans up after itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from ..runtime.ml import Cancelled, quiet_third_party_warnings

Emit = Callable[[Any], None]


@dataclass(frozen=True)
class _Ended:
    """The job's last event: what it raised, if anything."""

    outcome: BaseException | None


async def stream_job(
    job: Callable[[Emit, threading.Event], None],
    name: str,
    done: Callable[[], None] = lambda: None,
) -> AsyncGenerator[Any]:
    """Runs `job(emit, cancel)` on a thread named `name` and yields what it emits;
    re-raises what it raises (but `Cancelled`); `done()` runs when the job ends."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def emit(event: Any) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening
            pass

    def work() -> None:
        outcome: BaseException | None = None
        try:
            with quiet_third_party_warnings():
                job(emit, cancel)
        except BaseException as exc:  # handed to the stream
            outcome = exc
        finally:
            done()
        emit(_Ended(outcome))

    threading.Thread(target=work, name=name, daemon=True).start()
    finished = False
    try:
        while True:
            event = await events.get()
            if isinstance(event, _Ended):
                finished = True
                if event.outcome is None or isinstance(event.outcome, Cancelled):
                    return
                raise event.outcome
            yield event
    finally:
        if not finished:  # the caller went away: stop at the next safe point
            cancel.set()
