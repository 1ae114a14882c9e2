"""Living with the ML stack: one lock for its lazy imports, quiet converters, and
stopping a long job (training, import, a graph build) at a safe point.

transformers (and optimum, peft) import their submodules lazily; two threads that
first touch the same name at once can see a half-initialized module and fail with
`ImportError: cannot import name ...`. Tokenizer loads, trainings, imports and the
preparation all run on worker threads, so each takes `IMPORT_LOCK` around its imports.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

IMPORT_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_third_party_warnings() -> Iterator[None]:
    """The converters warn at length about tracing details that are not ours to fix.

    Silencing them also keeps a caller's `warnings.simplefilter("error")` (pytest's
    `filterwarnings = error`) from firing inside torch's tracer.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Cancelled(Exception):
    """The caller went away; the job stopped at a safe point."""


def stop_if_cancelled(cancel: threading.Event | None) -> None:
    """Raises `Cancelled` once `cancel` is set: call it between steps of a long job."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()
