"""Protobuf <-> domain conversion, at the edge only: the engine never sees protobuf."""

from __future__ import annotations

from .engine.types import Delta, Event, Failure, Info, Stop, StopReason
from .models import ModelStatus
from .pb.tiger.v1 import tiger_pb2 as pb
from .validation import ChatMessage, GenerateParams, check_generate_params

_STOP_REASONS = {
    StopReason.END_TURN: pb.STOP_REASON_END_TURN,
    StopReason.MAX_TOKENS: pb.STOP_REASON_MAX_TOKENS,
    StopReason.STOP_SEQUENCE: pb.STOP_REASON_STOP_SEQUENCE,
}


def params_from_pb(request: pb.GenerateRequest) -> GenerateParams:
    """Validated params from a request; raises `InvalidArgument`."""
    params = GenerateParams(
        model=request.model,
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        stream=True,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else 1.0,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        top_k=request.top_k if request.HasField("top_k") else 0,
        stop_sequences=tuple(request.stop_sequences),
        seed=request.seed if request.HasField("seed") else None,
    )
    check_generate_params(params)
    return params


def params_to_pb(params: GenerateParams) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        model=params.model,
        messages=[pb.Message(role=m.role, content=m.content) for m in params.messages],
        top_k=params.top_k,
        temperature=params.temperature,
        top_p=params.top_p,
        stop_sequences=list(params.stop_sequences),
    )
    if params.max_tokens is not None:
        request.max_tokens = params.max_tokens
    if params.seed is not None:
        request.seed = params.seed
    return request


def event_to_pb(event: Event) -> pb.GenerateChunk:
    match event:
        case Info(message):
            return pb.GenerateChunk(info=pb.InfoChunk(message=message))
        case Delta(text):
            return pb.GenerateChunk(delta=pb.DeltaChunk(delta=text))
        case Stop(reason, usage):
            return pb.GenerateChunk(stop=pb.StopChunk(
                stop_reason=_STOP_REASONS[reason],
                usage=pb.Usage(
                    duration_ms=usage.duration_ms,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                ),
            ))
        case Failure(message):
            return pb.GenerateChunk(error=pb.ErrorChunk(message=message))
    raise TypeError(f"not an engine event: {event!r}")


def model_to_pb(status: ModelStatus) -> pb.ModelInfo:
    return pb.ModelInfo(
        id=status.manifest.id,
        loaded=status.loaded,
        provider=status.provider,
        context_length=status.manifest.context_length,
        source=status.manifest.source,
        running=status.running,
        tokens_generated=status.tokens_generated,
    )
