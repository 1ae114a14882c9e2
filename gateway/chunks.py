"""gRPC chunks -> the JSON objects of the HTTP API, and gRPC statuses -> HTTP."""

from __future__ import annotations

from typing import Any

import grpc

from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
TERMINAL = ("stop", "error")


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def error_message(error: grpc.aio.AioRpcError) -> str:
    if error.code() == grpc.StatusCode.UNAVAILABLE and not error.details():
        return "the Tiger backend is unavailable"
    if (
        error.code() == grpc.StatusCode.UNAVAILABLE
        and "failed to connect" in (error.details() or "").lower()
    ):
        return "the Tiger backend is unreachable; is tiger-server running?"
    return error.details() or error.code().name.lower()


def _shared(chunk: Any, kind: str | None) -> dict[str, Any]:
    """The chunk kinds every stream has: `info` and `error` (and none at all)."""
    if kind == "info":
        return {"type": "info", "message": chunk.info.message}
    if kind == "error":
        return {"type": "error", "message": chunk.error.message}
    return {"type": "error", "message": "the backend sent an empty chunk"}


def stop_reason_name(reason: int) -> str:
    return pb.StopReason.Name(reason).removeprefix("STOP_REASON_").lower()


def chunk_to_json(chunk: pb.GenerateChunk) -> dict[str, Any]:
    kind = chunk.WhichOneof("chunk")
    if kind == "delta":
        return {"type": "delta", "delta": chunk.delta.delta}
    if kind == "stop":
        usage = chunk.stop.usage
        return {
            "type": "stop",
            "stop_reason": stop_reason_name(chunk.stop.stop_reason),
            "usage": {
                "duration_ms": usage.duration_ms,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
        }
    return _shared(chunk, kind)


def model_to_json(model: pb.ModelInfo) -> dict[str, Any]:
    return {
        "id": model.id,
        "loaded": model.loaded,
        "provider": model.provider,
        "context_length": model.context_length,
        "source": model.source,
        "running": model.running,
        "tokens_generated": model.tokens_generated,
    }


def train_chunk_to_json(chunk: pb.TrainChunk) -> dict[str, Any]:
    kind = chunk.WhichOneof("chunk")
    if kind == "progress":
        p = chunk.progress
        return {
            "type": "progress",
            "step": p.step,
            "total_steps": p.total_steps,
            "epoch": round(p.epoch, 4),
            "loss": round(p.loss, 6),
            "learning_rate": float(f"{p.learning_rate:.6g}"),
            "grad_norm": round(p.grad_norm, 6),
            "tokens_per_second": round(p.tokens_per_second, 1),
            "elapsed_ms": p.elapsed_ms,
            "eta_ms": p.eta_ms,
        }
    if kind == "stop":
        u = chunk.stop.usage
        return {
            "type": "stop",
            "stop_reason": chunk.stop.stop_reason,
            "model": chunk.stop.model,
            "usage": {
                "duration_ms": u.duration_ms,
                "train_tokens": u.train_tokens,
                "steps": u.steps,
            },
        }
    return _shared(chunk, kind)


def import_chunk_to_json(chunk: pb.ImportChunk) -> dict[str, Any]:
    kind = chunk.WhichOneof("chunk")
    if kind == "stop":
        return {
            "type": "stop",
            "stop_reason": "completed",
            "model": chunk.stop.model,
            "usage": {"duration_ms": chunk.stop.duration_ms},
        }
    return _shared(chunk, kind)
