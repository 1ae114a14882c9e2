"""The HTTP client: the gateway's API with the Python client's calls and types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from ..api.errors import (
    Status,
    StreamError,
    TigerError,
    UnavailableError,
    error_for,
)
from ..api.events import Delta, Info, Model, Progress, Stop, StopReason, Trained, Usage
from .rpc import DEFAULT_MODEL, Completion, Messages, completion, turns


class HttpClient:
    """`generate`, `complete`, `train` and `models` as `AsyncTigerClient` has them,
    through the HTTP gateway (imports are gRPC only); an async context manager."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self._url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None)
        )

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _error(self, r: aiohttp.ClientResponse) -> TigerError:
        """The typed error of an HTTP error answer."""
        try:
            message = (await r.json())["message"]
        except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
            message = await r.text()
        return error_for(Status.of_http(r.status), f"HTTP {r.status}: {message}")

    async def _stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._session.post(
                f"{self._url}{path}", json={**body, "stream": True}
            ) as r:
                if r.status != 200:
                    raise await self._error(r)
                async for line in r.content:
                    if line.strip():
                        chunk = json.loads(line)
                        if chunk["type"] == "error":
                            raise StreamError(chunk["message"])
                        yield chunk
        except aiohttp.ClientConnectionError as exc:
            raise UnavailableError(
                f"cannot reach the gateway at {self._url}: {exc}"
            ) from None

    async def generate(
        self,
        messages: Any,
        *,
        model: str = DEFAULT_MODEL,
        system: str | None = None,
        **params: Any,
    ) -> AsyncIterator[Any]:
        body = {
            "model": model,
            "messages": turns(messages, system),
            **{k: v for k, v in params.items() if v is not None},
        }
        async for c in self._stream("/v1/generate_response", body):
            if c["type"] == "info":
                yield Info(c["message"])
            elif c["type"] == "delta":
                yield Delta(c["delta"])
            elif c["type"] == "stop":
                yield Stop(StopReason(c["stop_reason"]), Usage(**c["usage"]))

    async def train(
        self, model: str, output_model: str, examples: Sequence[Any], **hyper: Any
    ) -> AsyncIterator[Any]:
        body = {
            "model": model,
            "output_model": output_model,
            "examples": list(examples),
            "hyperparameters": {k: v for k, v in hyper.items() if v is not None},
        }
        async for c in self._stream("/v1/train", body):
            if c["type"] == "info":
                yield Info(c["message"])
            elif c["type"] == "progress":
                yield Progress(**{k: v for k, v in c.items() if k != "type"})
            elif c["type"] == "stop":
                yield Trained(c["model"], **c["usage"])

    async def complete(self, messages: Messages, **kwargs: Any) -> Completion:
        """The whole answer at once."""
        return completion([c async for c in self.generate(messages, **kwargs)])

    async def models(self) -> list[Model]:
        try:
            async with self._session.get(f"{self._url}/v1/models") as r:
                if r.status != 200:
                    raise await self._error(r)
                body = await r.json()
        except aiohttp.ClientConnectionError as exc:
            raise UnavailableError(
                f"cannot reach the gateway at {self._url}: {exc}"
            ) from None
        fields = set(Model.__annotations__)
        return [
            Model(**{k: v for k, v in m.items() if k in fields}) for m in body["models"]
        ]
