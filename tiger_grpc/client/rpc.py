"""The gRPC clients: `AsyncTigerClient` (asyncio) and `TigerClient` (blocking), with
the same methods, built on one base that makes the requests and reads the chunks.

Leaving a loop early cancels the call on the server (its compute is freed at once).
Errors are raised as `TigerError` subclasses, mapped from the status codes through
the one status table.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ..api.errors import Status, StreamError, TigerError, error_for
from ..api.events import (
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
from ..api.wire import (
    GENERATION_OPTIONS,
    GENERATION_PLAIN,
    MESSAGE_SIZE_OPTIONS,
    STRUCTURE_FIELDS,
    event_from_pb,
    model_from_pb,
    structure_to_pb,
)
from ..config import DEFAULT_GRPC_PORT, DEFAULT_MODEL_ID
from ..pb.tiger.v1 import tiger_pb2 as pb
from ..pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

DEFAULT_TARGET = f"localhost:{DEFAULT_GRPC_PORT}"
DEFAULT_MODEL = DEFAULT_MODEL_ID
Messages = str | Sequence[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    stop_reason: StopReason
    usage: Usage


@dataclass
class Tls:
    """TLS to the server: its CA, and a client certificate if it requires one."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            read(self.ca), read(self.key), read(self.cert)
        )


def turns(messages: Messages, system: str | None) -> list[dict[str, str]]:
    """A prompt (or a conversation) and an optional system message, as turns."""
    conversation = (
        [{"role": "user", "content": messages}]
        if isinstance(messages, str)
        else list(messages)
    )
    if system is not None:
        conversation = [{"role": "system", "content": system}, *conversation]
    return conversation


def _pb_messages(conversation: Sequence[dict[str, str]]) -> list[pb.Message]:
    return [pb.Message(role=t["role"], content=t["content"]) for t in conversation]


def rpc_error(exc: grpc.RpcError) -> TigerError:
    """The typed error of a failed call."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or code.name
    return error_for(Status.of_grpc(code), details)


def event(chunk: Any) -> Any:
    """A chunk's event; an error chunk raises `StreamError`."""
    result = event_from_pb(chunk)
    if isinstance(result, Failure):
        raise StreamError(result.message)
    return result


def completion(chunks: list[Any]) -> Completion:
    """The answer of a stream's chunks (its first choice, when it has several)."""
    stop = next(c for c in chunks if isinstance(c, Stop) and c.index == 0)
    text = "".join(c.text for c in chunks if isinstance(c, Delta) and c.index == 0)
    return Completion(text, stop.stop_reason, stop.usage)


class _Base:
    """What both clients share: settings, the channel options and the requests."""

    def __init__(
        self, target: str | None, api_key: str | None, timeout: float | None
    ) -> None:
        self.target = target or os.environ.get("TIGER_GRPC_TARGET", DEFAULT_TARGET)
        key = api_key if api_key is not None else os.environ.get("TIGER_API_KEY")
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._timeout = timeout

    def _channel_args(self) -> dict[str, Any]:
        return {"target": self.target, "options": MESSAGE_SIZE_OPTIONS}

    def _call(self, timeout: float | None = None) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": timeout or self._timeout}

    @staticmethod
    def _generate_request(
        messages: Messages,
        model: str,
        system: str | None,
        stop_sequences: Sequence[str],
        params: dict[str, Any],
    ) -> pb.GenerateRequest:
        structure = structure_to_pb(params)
        known = {*GENERATION_OPTIONS, *GENERATION_PLAIN, *STRUCTURE_FIELDS}
        unknown = set(params) - known
        if unknown:
            raise TypeError(
                f"unknown generation parameters: {', '.join(sorted(unknown))}"
            )
        return pb.GenerateRequest(
            model=model,
            # A raw `prompt` goes without messages (the chat template).
            messages=[]
            if params.get("prompt") is not None
            else _pb_messages(turns(messages, system)),
            stop_sequences=list(stop_sequences),
            **{
                k: v
                for k, v in params.items()
                if v is not None and k not in STRUCTURE_FIELDS
            },
            **structure,
        )

    @staticmethod
    def _train_request(
        model: str, output_model: str, examples: Sequence[Any], hyper: dict[str, Any]
    ) -> pb.TrainRequest:
        conversations = [
            pb.Conversation(
                messages=_pb_messages(e["messages"] if isinstance(e, dict) else e)
            )
            for e in examples
        ]
        return pb.TrainRequest(
            model=model,
            output_model=output_model,
            examples=conversations,
            hyperparameters=pb.Hyperparameters(
                **{k: v for k, v in hyper.items() if v is not None}
            ),
        )


class AsyncTigerClient(_Base):
    """An asyncio client over one gRPC channel; use it as an async context manager."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(target, api_key, timeout)
        self._channel = (
            grpc.aio.secure_channel(
                credentials=tls.credentials(), **self._channel_args()
            )
            if tls
            else grpc.aio.insecure_channel(**self._channel_args())
        )
        self._stub = pb_grpc.TigerStub(self._channel)

    async def __aenter__(self) -> AsyncTigerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _stream(self, start: Callable[[], Any]) -> AsyncIterator[Any]:
        call = start()  # on the first iteration, as a generator does
        try:
            async for chunk in call:
                yield event(chunk)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None
        finally:
            call.cancel()

    def generate(
        self,
        messages: Messages,
        *,
        model: str = DEFAULT_MODEL,
        system: str | None = None,
        stop_sequences: Sequence[str] = (),
        timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[Info | Delta | Stop]:
        """Streams `Info`, `Delta` and a final `Stop`; leaving the loop cancels the
        call."""
        request = self._generate_request(
            messages, model, system, stop_sequences, params
        )
        return self._stream(lambda: self._stub.Generate(request, **self._call(timeout)))

    async def complete(self, messages: Messages, **kwargs: Any) -> Completion:
        """The whole answer at once."""
        return completion([c async for c in self.generate(messages, **kwargs)])

    def train(
        self,
        model: str,
        output_model: str,
        examples: Sequence[Any],
        *,
        timeout: float | None = None,
        **hyperparameters: Any,
    ) -> AsyncIterator[Info | Progress | Trained]:
        """Streams `Info` and `Progress`, then `Trained`; leaving the loop cancels
        it."""
        request = self._train_request(model, output_model, examples, hyperparameters)
        return self._stream(lambda: self._stub.Train(request, **self._call(timeout)))

    def import_model(self, path: str, model_id: str) -> AsyncIterator[Info | Imported]:
        """Imports a local HF Llama checkpoint (a path the server can read)."""
        request = pb.ImportModelRequest(path=path, id=model_id)
        return self._stream(
            lambda: self._stub.ImportModel(request, metadata=self._metadata)
        )

    async def models(self) -> list[Model]:
        try:
            reply = await self._stub.ListModels(
                pb.ListModelsRequest(), **self._call(self._timeout or 30)
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None
        return [model_from_pb(m) for m in reply.models]


class TigerClient(_Base):
    """The same API, blocking; iterators cancel their call when closed or dropped."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(target, api_key, timeout)
        self._channel = (
            grpc.secure_channel(credentials=tls.credentials(), **self._channel_args())
            if tls
            else grpc.insecure_channel(**self._channel_args())
        )
        self._stub = pb_grpc.TigerStub(self._channel)

    def __enter__(self) -> TigerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _stream(self, start: Callable[[], Any]) -> Iterator[Any]:
        call = start()  # on the first iteration, as a generator does
        try:
            for chunk in call:
                yield event(chunk)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        finally:
            call.cancel()

    def generate(
        self,
        messages: Messages,
        *,
        model: str = DEFAULT_MODEL,
        system: str | None = None,
        stop_sequences: Sequence[str] = (),
        timeout: float | None = None,
        **params: Any,
    ) -> Iterator[Info | Delta | Stop]:
        request = self._generate_request(
            messages, model, system, stop_sequences, params
        )
        return self._stream(lambda: self._stub.Generate(request, **self._call(timeout)))

    def complete(self, messages: Messages, **kwargs: Any) -> Completion:
        return completion(list(self.generate(messages, **kwargs)))

    def train(
        self,
        model: str,
        output_model: str,
        examples: Sequence[Any],
        *,
        timeout: float | None = None,
        **hyperparameters: Any,
    ) -> Iterator[Info | Progress | Trained]:
        request = self._train_request(model, output_model, examples, hyperparameters)
        return self._stream(lambda: self._stub.Train(request, **self._call(timeout)))

    def models(self) -> list[Model]:
        try:
            reply = self._stub.ListModels(
                pb.ListModelsRequest(), **self._call(self._timeout or 30)
            )
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        return [model_from_pb(m) for m in reply.models]
