"""Random and malformed bodies against the live gateway: a clear 4xx, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import API_KEY, TINY_MODEL_ID, Process
from tiger_grpc.api.params import ChatMessage, GenerateParams
from tiger_grpc.api.wire import params_to_pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
VALID = {
    "model": TINY_MODEL_ID,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 2,
}
FIELDS = [*VALID, "stream", "temperature", "top_p", "top_k", "stop_sequences", "seed"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _short(value: Any) -> bool:
    # A valid big max_tokens would only make a slow test, not a better one.
    return not (isinstance(value, int) and not isinstance(value, bool) and value > 4)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    body = dict(VALID)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            body.pop(field, None)
        else:
            value = draw(json_values)
            body[field] = value if field != "max_tokens" or _short(value) else 0
    return json.dumps(body).encode()


bodies = st.one_of(
    mutated_bodies(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_random_bodies_get_clear_answers(base_url: str, body: bytes) -> None:
    reply = requests.post(
        f"{base_url}/v1/generate_response", data=body, headers=HEADERS, timeout=60
    )
    assert reply.status_code < 500, reply.text
    if reply.status_code != 200:
        assert reply.headers["Content-Type"].startswith("application/json")
        error = reply.json()
        assert error["type"] == "error" and error["message"]


def test_servers_are_still_up_after_the_fuzzing(base_url: str) -> None:
    assert requests.get(f"{base_url}/readyz", timeout=10).status_code == 200
    reply = requests.post(
        f"{base_url}/v1/generate_response", json=VALID, headers=HEADERS, timeout=60
    )
    assert reply.status_code == 200 and reply.json()["type"] == "message"


@pytest.mark.parametrize(
    "field_values",
    [{"top_p": 1.5}, {"temperature": -1.0}, {"top_k": -3}, {"stop_sequences": ("",)}],
)
async def test_grpc_and_http_say_the_same(
    base_url: str, backend: Process, field_values
) -> None:
    body = {
        **VALID,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in field_values.items()},
    }
    http = requests.post(
        f"{base_url}/v1/generate_response", json=body, headers=HEADERS, timeout=60
    )
    assert http.status_code == 400
    # Built by hand: the params class itself refuses these values.
    request = params_to_pb(
        GenerateParams(model=TINY_MODEL_ID, messages=(ChatMessage("user", "hi"),))
    )
    for name, value in field_values.items():
        if isinstance(value, tuple):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        stub = pb_grpc.TigerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(
                request, metadata=(("authorization", f"Bearer {API_KEY}"),)
            ):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == http.json()["message"]
