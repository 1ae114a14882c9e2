"""Fakes for the gateway's in-process tests: gRPC calls that play scripted chunks."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb

KEY = "gw-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STOP = pb.GenerateChunk(
    stop=pb.StopChunk(
        stop_reason=pb.STOP_REASON_END_TURN,
        usage=pb.Usage(duration_ms=5, input_tokens=3, output_tokens=2, cached_tokens=1),
    )
)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeCall:
    """A server-streaming call that plays `chunks`, then `error` if given."""

    def __init__(self, chunks: list, error: grpc.aio.AioRpcError | None = None):
        self.chunks, self.error, self.cancelled = list(chunks), error, False

    async def read(self) -> Any:
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        return grpc.aio.EOF

    def done(self) -> bool:
        return not self.chunks and self.error is None

    def cancel(self) -> None:
        self.cancelled = True


class FakeTiger:
    """`Generate` answers with `next` when set (once), else a fresh call of
    `script`; `ListModels` with one model."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []
        self.script = [
            pb.GenerateChunk(info=pb.InfoChunk(message="Loading")),
            pb.GenerateChunk(delta=pb.DeltaChunk(delta="Hé")),
            pb.GenerateChunk(delta=pb.DeltaChunk(delta="llo")),
            STOP,
        ]
        self.next: FakeCall | None = None

    def Generate(self, request: Any, metadata: Any) -> FakeCall:  # noqa: N802
        self.calls.append(("Generate", request, metadata))
        call, self.next = self.next or FakeCall(self.script), None
        return call

    async def ListModels(self, request: Any, metadata: Any, timeout: float) -> Any:  # noqa: N802
        self.calls.append(("ListModels", request, metadata))
        info = pb.ModelInfo(id="m1", loaded=True, provider="CPU", context_length=64)
        return pb.ListModelsResponse(models=[info], default_model="m1")


class FakeHealth:
    status = health_pb2.HealthCheckResponse.SERVING

    async def Check(self, request: Any, timeout: float) -> Any:  # noqa: N802
        return health_pb2.HealthCheckResponse(status=self.status)
