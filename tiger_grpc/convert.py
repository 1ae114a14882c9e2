"""Engine events -> protobuf, at the edge only: the engine never sees protobuf."""

from __future__ import annotations

from .engine.types import (
    Delta,
    Event,
    Failure,
    Imported,
    Info,
    Progress,
    Stop,
    StopReason,
    Trained,
)
from .models import ModelStatus
from .pb.tiger.v1 import tiger_pb2 as pb
from .training import TrainEvent

_STOP_REASONS = {
    StopReason.END_TURN: pb.STOP_REASON_END_TURN,
    StopReason.MAX_TOKENS: pb.STOP_REASON_MAX_TOKENS,
    StopReason.STOP_SEQUENCE: pb.STOP_REASON_STOP_SEQUENCE,
}


def event_to_pb(event: Event) -> pb.GenerateChunk:
    match event:
        case Info(message):
            return pb.GenerateChunk(info=pb.InfoChunk(message=message))
        case Delta(text):
            return pb.GenerateChunk(delta=pb.DeltaChunk(delta=text))
        case Stop(reason, usage):
            return pb.GenerateChunk(
                stop=pb.StopChunk(
                    stop_reason=_STOP_REASONS[reason],
                    usage=pb.Usage(
                        duration_ms=usage.duration_ms,
                        input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens,
                    ),
                )
            )
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


def train_event_to_pb(event: TrainEvent) -> pb.TrainChunk:
    match event:
        case Info(message):
            return pb.TrainChunk(info=pb.InfoChunk(message=message))
        case Progress():
            return pb.TrainChunk(progress=pb.ProgressChunk(**event.__dict__))
        case Trained(model, duration_ms, train_tokens, steps):
            return pb.TrainChunk(
                stop=pb.TrainStopChunk(
                    stop_reason="completed",
                    model=model,
                    usage=pb.TrainUsage(
                        duration_ms=duration_ms, train_tokens=train_tokens, steps=steps
                    ),
                )
            )
    raise TypeError(f"not a training event: {event!r}")


def import_event_to_pb(event: Info | Imported) -> pb.ImportChunk:
    if isinstance(event, Info):
        return pb.ImportChunk(info=pb.InfoChunk(message=event.message))
    return pb.ImportChunk(
        stop=pb.ImportStopChunk(model=event.model, duration_ms=event.duration_ms)
    )
