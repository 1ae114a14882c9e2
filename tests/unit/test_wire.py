"""The contract's protobuf form and its status table: every event and listing goes
to protobuf and back unchanged, and every status has its gRPC code and HTTP answer."""

from __future__ import annotations

import grpc
import pytest

from tiger_grpc.api.errors import (
    NotFoundError,
    OverloadedError,
    Status,
    TigerError,
    error_for,
)
from tiger_grpc.api.events import (
    Delta,
    Failure,
    Imported,
    Info,
    Model,
    Progress,
    Stop,
    StopReason,
    Trained,
    Usage,
)
from tiger_grpc.api.wire import event_from_pb, event_to_pb, model_from_pb, model_to_pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb

EVENTS = [
    (pb.GenerateChunk, Info("Loading model m")),
    (pb.GenerateChunk, Delta("Hé 🐯")),
    (pb.GenerateChunk, Failure("boom")),
    *[(pb.GenerateChunk, Stop(reason, Usage(5, 3, 2))) for reason in StopReason],
    (pb.TrainChunk, Progress(2, 4, 0.5, 1.25, 0.5, 2.0, 100.0, 30, 40)),
    (pb.TrainChunk, Trained("m2", 100, 640, 4)),
    (pb.ImportChunk, Imported("m3", 200)),
]


@pytest.mark.parametrize(("chunk", "event"), EVENTS)
def test_events_go_to_protobuf_and_back(chunk, event) -> None:
    message = event_to_pb(event, chunk)
    assert isinstance(message, chunk)
    assert event_from_pb(chunk.FromString(message.SerializeToString())) == event


def test_every_stop_reason_of_the_proto_is_known() -> None:
    names = {n.removeprefix("STOP_REASON_") for n in pb.StopReason.keys()}
    assert names - {"UNSPECIFIED"} == set(StopReason.__members__)
    unspecified = pb.GenerateChunk(stop=pb.StopChunk(usage=pb.Usage()))
    assert isinstance(event_from_pb(unspecified), Failure)
    assert isinstance(event_from_pb(pb.GenerateChunk()), Failure)  # empty


def test_a_listing_goes_to_protobuf_and_back() -> None:
    model = Model("m", True, "CPUExecutionProvider", 8192, "here", 3, 0, 99)
    assert model_from_pb(model_to_pb(model)) == model
    advised = Model("m", False, "CPU", 8192, sampling={"temperature": 0.5, "top_k": 0})
    assert model_from_pb(model_to_pb(advised)) == advised  # top_k 0 stays set


def test_the_status_table_covers_every_grpc_code() -> None:
    assert set(Status.__members__) == {code.name for code in grpc.StatusCode}
    for code in grpc.StatusCode:
        assert Status.of_grpc(code).grpc_code is code
    expected = {
        "INVALID_ARGUMENT": 400,
        "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "RESOURCE_EXHAUSTED": 429,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DEADLINE_EXCEEDED": 504,
    }
    assert {name: Status[name].http_status for name in expected} == expected
    assert Status.of_http(413) is Status.INVALID_ARGUMENT
    assert Status.of_http(500) is Status.INTERNAL


def test_errors_are_typed_by_status_both_ways() -> None:
    assert type(error_for(Status.NOT_FOUND, "x")) is NotFoundError
    assert type(error_for(Status.of_http(429), "x")) is OverloadedError
    generic = error_for(Status.UNIMPLEMENTED, "x")
    assert type(generic) is TigerError and generic.code is grpc.StatusCode.UNIMPLEMENTED
    assert TigerError("x", grpc.StatusCode.NOT_FOUND).status is Status.NOT_FOUND
