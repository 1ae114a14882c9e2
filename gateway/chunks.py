"""Events -> the JSON objects of the guide's API (one per NDJSON line), and what a
failed gRPC call says to an HTTP client."""

from __future__ import annotations

from typing import Any

import grpc

from tiger_grpc.api.events import (
    COMPLETED,
    MODEL_FIELDS,
    Delta,
    Failure,
    Imported,
    Info,
    Model,
    Progress,
    Stop,
    Trained,
)


def retry_after(error: grpc.aio.AioRpcError, default: str = "1") -> str:
    """Seconds to wait, as the server says (a key's limit), else `default`."""
    for name, value in error.trailing_metadata() or ():
        if name == "retry-after" and isinstance(value, str) and value.isdigit():
            return value
    return default


def error_message(error: grpc.aio.AioRpcError) -> str:
    if error.code() == grpc.StatusCode.UNAVAILABLE and not error.details():
        return "the Tiger backend is unavailable"
    if (
        error.code() == grpc.StatusCode.UNAVAILABLE
        and "failed to connect" in (error.details() or "").lower()
    ):
        return "the Tiger backend is unreachable; is tiger-server running?"
    return error.details() or error.code().name.lower()


def event_to_json(event: Any) -> dict[str, Any]:
    match event:
        case Info(message):
            return {"type": "info", "message": message}
        case Delta(text):
            return {"type": "delta", "delta": text}
        case Stop(reason, usage):
            return {"type": "stop", "stop_reason": str(reason), "usage": vars(usage)}
        case Failure(message, _):
            return {"type": "error", "message": message}
        case Progress():
            return _progress(event)
        case Trained(model, duration_ms, train_tokens, steps):
            counts = {
                "duration_ms": duration_ms,
                "train_tokens": train_tokens,
                "steps": steps,
            }
            return _completed(model, counts)
        case Imported(model, duration_ms):
            return _completed(model, {"duration_ms": duration_ms})
    raise TypeError(f"not an event: {event!r}")


def _completed(model: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"type": "stop", "stop_reason": COMPLETED, "model": model, "usage": usage}


def _progress(p: Progress) -> dict[str, Any]:
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


def model_to_json(model: Model) -> dict[str, Any]:
    entry = {name: getattr(model, name) for name in MODEL_FIELDS}
    # float32 on the wire: 0.2 arrives as 0.20000000298...; JSON says 0.2.
    entry["sampling"] = {k: round(v, 6) for k, v in model.sampling.items()}
    return entry
