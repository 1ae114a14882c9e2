"""Python clients for Tiger: over gRPC, async (`AsyncTigerClient`) and blocking
(`TigerClient`), and over the HTTP gateway (`HttpClient`); the `tiger` command line
is `cli`. Results and errors are the types of `tiger_grpc.api`.

    async with AsyncTigerClient("localhost:50051", api_key=...) as tiger:
        async for chunk in tiger.generate("Why is the sky blue?"):
            if isinstance(chunk, Delta):
                print(chunk.text, end="")
        answer = await tiger.complete("Hello!", temperature=0)

Imports `api` and the generated protobuf code only: no engine, no ML stack.
"""

from ..api.errors import (
    AlreadyExistsError,
    AuthenticationError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    OverloadedError,
    StreamError,
    TigerError,
    UnavailableError,
)
from ..api.events import (
    Delta,
    Imported,
    Info,
    Model,
    Progress,
    Stop,
    StopReason,
    Trained,
    Usage,
)
from .http import HttpClient
from .rpc import DEFAULT_MODEL, AsyncTigerClient, Completion, TigerClient, Tls

__all__ = [
    "DEFAULT_MODEL",
    "AsyncTigerClient",
    "TigerClient",
    "HttpClient",
    "Tls",
    "Info",
    "Delta",
    "Stop",
    "StopReason",
    "Usage",
    "Completion",
    "Progress",
    "Trained",
    "Imported",
    "Model",
    "TigerError",
    "InvalidArgumentError",
    "AuthenticationError",
    "NotFoundError",
    "AlreadyExistsError",
    "OverloadedError",
    "UnavailableError",
    "DeadlineExceededError",
    "StreamError",
]
