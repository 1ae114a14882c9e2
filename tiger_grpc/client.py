"""Python client for Tiger's gRPC API: async (`AsyncTigerClient`) and sync (`TigerClient`).

    async with AsyncTigerClient("localhost:50051", api_key=...) as tiger:
        async for chunk in tiger.generate("Why is the sky blue?"):
            if isinstance(chunk, Delta):
                print(chunk.text, end="")
        answer = await tiger.complete("Hello!", temperature=0)

Leaving an `async for` early cancels the call on the server (its compute is freed at
once). Errors are raised as `TigerError` subclasses mapped from the status codes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from .engine.types import Delta, Imported, Info, Progress, Trained, Usage
from .pb.tiger.v1 import tiger_pb2 as pb
from .pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

__all__ = [
    "AsyncTigerClient",
    "TigerClient",
    "Tls",
    "Info",
    "Delta",
    "Stop",
    "Usage",
    "Completion",
    "Progress",
    "Trained",
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

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MODEL = "smollm2-135m-instruct"
Messages = str | Sequence[dict[str, str]]


class TigerError(Exception):
    """A call failed; `code` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgumentError(TigerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class AuthenticationError(TigerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class NotFoundError(TigerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(TigerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class OverloadedError(TigerError):
    """The server is at capacity (or already training): retry shortly."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(TigerError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(TigerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class StreamError(TigerError):
    """The stream started, then failed: the server sent an `error` chunk."""

    code = grpc.StatusCode.INTERNAL


_ERRORS = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        AuthenticationError,
        NotFoundError,
        AlreadyExistsError,
        OverloadedError,
        UnavailableError,
        DeadlineExceededError,
    )
}


def _error(exc: grpc.RpcError) -> TigerError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or code.name
    return _ERRORS.get(code, TigerError)(details, code)


@dataclass(frozen=True)
class Stop:
    stop_reason: str  # end_turn, max_tokens or stop_sequence
    usage: Usage


@dataclass(frozen=True)
class Completion:
    text: str
    stop_reason: str
    usage: Usage


@dataclass(frozen=True)
class Model:
    id: str
    loaded: bool
    provider: str
    context_length: int
    source: str = ""
    running: int = 0


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


def _messages(messages: Messages, system: str | None) -> list[pb.Message]:
    turns = (
        [{"role": "user", "content": messages}]
        if isinstance(messages, str)
        else list(messages)
    )
    if system is not None:
        turns = [{"role": "system", "content": system}, *turns]
    return [pb.Message(role=t["role"], content=t["content"]) for t in turns]


def _generate_request(
    messages: Messages,
    model: str,
    system: str | None,
    stop_sequences: Sequence[str] = (),
    **params: Any,
) -> pb.GenerateRequest:
    known = {"max_tokens", "temperature", "top_p", "top_k", "seed"}
    unknown = set(params) - known
    if unknown:
        raise TypeError(f"unknown generation parameters: {', '.join(sorted(unknown))}")
    return pb.GenerateRequest(
        model=model,
        messages=_messages(messages, system),
        stop_sequences=list(stop_sequences),
        **{k: v for k, v in params.items() if v is not None},
    )


def _train_request(
    model: str, output_model: str, examples: Sequence[Any], **hyper: Any
) -> pb.TrainRequest:
    conversations = []
    for example in examples:
        turns = example["messages"] if isinstance(example, dict) else example
        conversations.append(
            pb.Conversation(
                messages=[
                    pb.Message(role=t["role"], content=t["content"]) for t in turns
                ]
            )
        )
    return pb.TrainRequest(
        model=model,
        output_model=output_model,
        examples=conversations,
        hyperparameters=pb.Hyperparameters(
            **{k: v for k, v in hyper.items() if v is not None}
        ),
    )


def _chunk(chunk: pb.GenerateChunk) -> Info | Delta | Stop:
    kind = chunk.WhichOneof("chunk")
    if kind == "info":
        return Info(chunk.info.message)
    if kind == "delta":
        return Delta(chunk.delta.delta)
    if kind == "stop":
        u = chunk.stop.usage
        reason = (
            pb.StopReason.Name(chunk.stop.stop_reason)
            .removeprefix("STOP_REASON_")
            .lower()
        )
        return Stop(reason, Usage(u.duration_ms, u.input_tokens, u.output_tokens))
    raise StreamError(chunk.error.message if kind == "error" else "empty chunk")


def _train_chunk(chunk: pb.TrainChunk) -> Info | Progress | Trained:
    kind = chunk.WhichOneof("chunk")
    if kind == "info":
        return Info(chunk.info.message)
    if kind == "progress":
        p = chunk.progress
        return Progress(
            p.step,
            p.total_steps,
            p.epoch,
            p.loss,
            p.learning_rate,
            p.grad_norm,
            p.tokens_per_second,
            p.elapsed_ms,
            p.eta_ms,
        )
    if kind == "stop":
        u = chunk.stop.usage
        return Trained(chunk.stop.model, u.duration_ms, u.train_tokens, u.steps)
    raise StreamError(chunk.error.message if kind == "error" else "empty chunk")


def _import_chunk(chunk: pb.ImportChunk) -> Info | Imported:
    kind = chunk.WhichOneof("chunk")
    if kind == "info":
        return Info(chunk.info.message)
    if kind == "stop":
        return Imported(chunk.stop.model, chunk.stop.duration_ms)
    raise StreamError(chunk.error.message if kind == "error" else "empty chunk")


def _models(reply: pb.ListModelsResponse) -> list[Model]:
    return [
        Model(m.id, m.loaded, m.provider, m.context_length, m.source, m.running)
        for m in reply.models
    ]


def _complete(chunks: list[Info | Delta | Stop]) -> Completion:
    stop = chunks[-1]
    assert isinstance(stop, Stop)
    return Completion(
        "".join(c.text for c in chunks if isinstance(c, Delta)),
        stop.stop_reason,
        stop.usage,
    )


@dataclass
class _Settings:
    target: str
    api_key: str | None
    tls: Tls | None
    timeout: float | None
    options: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


def _settings(
    target: str | None, api_key: str | None, tls: Tls | None, timeout: float | None
) -> _Settings:
    return _Settings(
        target or os.environ.get("TIGER_GRPC_TARGET", DEFAULT_TARGET),
        api_key if api_key is not None else os.environ.get("TIGER_API_KEY"),
        tls,
        timeout,
    )


class AsyncTigerClient:
    """An asyncio client over one gRPC channel; use it as an async context manager."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout: float | None = None,
    ) -> None:
        self._s = _settings(target, api_key, tls, timeout)
        self._channel = (
            grpc.aio.secure_channel(self._s.target, tls.credentials())
            if tls
            else grpc.aio.insecure_channel(self._s.target)
        )
        self._stub = pb_grpc.TigerStub(self._channel)

    async def __aenter__(self) -> AsyncTigerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self,
        messages: Messages,
        *,
        model: str = DEFAULT_MODEL,
        system: str | None = None,
        stop_sequences: Sequence[str] = (),
        timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[Info | Delta | Stop]:
        """Streams `Info`, `Delta` and a final `Stop`; leaving the loop cancels the call."""
        call = self._stub.Generate(
            _generate_request(messages, model, system, stop_sequences, **params),
            metadata=self._s.metadata,
            timeout=timeout or self._s.timeout,
        )
        try:
            async for chunk in call:
                yield _chunk(chunk)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()

    async def complete(self, messages: Messages, **kwargs: Any) -> Completion:
        """The whole answer at once."""
        return _complete([c async for c in self.generate(messages, **kwargs)])

    async def train(
        self,
        model: str,
        output_model: str,
        examples: Sequence[Any],
        *,
        timeout: float | None = None,
        **hyperparameters: Any,
    ) -> AsyncIterator[Info | Progress | Trained]:
        """Streams `Info` and `Progress`, then `Trained`; leaving the loop cancels it."""
        call = self._stub.Train(
            _train_request(model, output_model, examples, **hyperparameters),
            metadata=self._s.metadata,
            timeout=timeout or self._s.timeout,
        )
        try:
            async for chunk in call:
                yield _train_chunk(chunk)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()

    async def import_model(
        self, path: str, model_id: str
    ) -> AsyncIterator[Info | Imported]:
        """Imports a local HF Llama checkpoint (a path the server can read)."""
        call = self._stub.ImportModel(
            pb.ImportModelRequest(path=path, id=model_id), metadata=self._s.metadata
        )
        try:
            async for chunk in call:
                yield _import_chunk(chunk)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def models(self) -> list[Model]:
        try:
            reply = await self._stub.ListModels(
                pb.ListModelsRequest(),
                metadata=self._s.metadata,
                timeout=self._s.timeout or 30,
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return _models(reply)


class TigerClient:
    """The same API, blocking; iterators cancel their call when closed or dropped."""

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout: float | None = None,
    ) -> None:
        self._s = _settings(target, api_key, tls, timeout)
        self._channel = (
            grpc.secure_channel(self._s.target, tls.credentials())
            if tls
            else grpc.insecure_channel(self._s.target)
        )
        self._stub = pb_grpc.TigerStub(self._channel)

    def __enter__(self) -> TigerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

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
        call = self._stub.Generate(
            _generate_request(messages, model, system, stop_sequences, **params),
            metadata=self._s.metadata,
            timeout=timeout or self._s.timeout,
        )
        try:
            for chunk in call:
                yield _chunk(chunk)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()

    def complete(self, messages: Messages, **kwargs: Any) -> Completion:
        return _complete(list(self.generate(messages, **kwargs)))

    def train(
        self,
        model: str,
        output_model: str,
        examples: Sequence[Any],
        *,
        timeout: float | None = None,
        **hyperparameters: Any,
    ) -> Iterator[Info | Progress | Trained]:
        call = self._stub.Train(
            _train_request(model, output_model, examples, **hyperparameters),
            metadata=self._s.metadata,
            timeout=timeout or self._s.timeout,
        )
        try:
            for chunk in call:
                yield _train_chunk(chunk)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()

    def models(self) -> list[Model]:
        try:
            reply = self._stub.ListModels(
                pb.ListModelsRequest(),
                metadata=self._s.metadata,
                timeout=self._s.timeout or 30,
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _models(reply)
