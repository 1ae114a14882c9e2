"""POST /v1/chat/completions: one Generate call with `n` choices, answered as one
`chat.completion` object or as `chat.completion.chunk` Server-Sent Events."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.events import Delta, Stop
from tiger_grpc.api.wire import params_to_pb

from ..auth import Reject, call_metadata
from ..backend import BACKEND
from ..bodies import read_body
from ..config import CONFIG
from ..native import MODEL_KEY
from .errors import error_response
from .objects import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    Finish,
)
from .protocol import ChatCompletionRequest
from .serve import serve
from .shapes import FINISH, ChunkMaker, Reply, chat_logprobs, usage

log = logging.getLogger(__name__)


class ChatShaper(ChunkMaker):
    """Builds the chunks (streaming) and the final object (not) of one answer."""

    chunk_kind = ChatCompletionChunk

    def __init__(self, body: ChatCompletionRequest, model: str) -> None:
        self.reply = Reply("chatcmpl", model)
        self.logprobs = body.logprobs
        self.include_usage = body.include_usage
        self.texts: list[list[str]] = [[] for _ in range(body.n)]
        self.tokens: list[list[Any]] = [[] for _ in range(body.n)]
        self.finish: list[Finish | None] = [None] * body.n
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0

    def start(self) -> list[dict[str, Any]]:
        """The first chunk of each choice carries the role."""
        return [
            self._chunk(i, ChunkDelta(role="assistant", content=""))
            for i in range(len(self.texts))
        ]

    def on_event(self, position: int, event: Any) -> list[dict[str, Any]]:
        if isinstance(event, Delta):
            self.texts[event.index].append(event.text)
            self.tokens[event.index].extend(event.logprobs)
            logprobs = chat_logprobs(event.logprobs) if self.logprobs else None
            return [self._chunk(event.index, ChunkDelta(content=event.text), logprobs)]
        if isinstance(event, Stop):
            finish = self.finish[event.index] = FINISH[event.stop_reason]
            self.prompt_tokens = event.usage.input_tokens
            self.completion_tokens += event.usage.output_tokens
            if event.index == 0:  # the prompt is counted once, with its first choice
                self.cached_tokens = event.usage.cached_tokens
            return [self._chunk(event.index, ChunkDelta(), finish=finish)]
        return []

    def _chunk(
        self,
        index: int,
        delta: ChunkDelta,
        logprobs: ChoiceLogprobs | None = None,
        finish: Finish | None = None,
    ) -> dict[str, Any]:
        choice = ChunkChoice(
            index=index, delta=delta, logprobs=logprobs, finish_reason=finish
        )
        return self._wrap(choice)

    def _usage(self) -> CompletionUsage:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def final(self) -> dict[str, Any]:
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content="".join(self.texts[i])),
                logprobs=chat_logprobs(self.tokens[i]) if self.logprobs else None,
                finish_reason=self.finish[i],
            )
            for i in range(len(self.texts))
        ]
        return ChatCompletion(
            **self.reply.fields(), choices=choices, usage=self._usage()
        ).dump()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    try:
        metadata = call_metadata(request, request.app[CONFIG])
        body = await read_body(request, ChatCompletionRequest)
        params = body.params()
    except Reject as reject:
        return error_response(reject.status, reject.message)
    except InvalidArgumentError as exc:
        return error_response(exc.status, exc.message)
    model = request[MODEL_KEY] = params.model.strip().lower()
    if body.user:
        log.info("chat completion for user %r", body.user[:128])
    call = request.app[BACKEND].tiger.Generate(params_to_pb(params), metadata=metadata)
    shaper = ChatShaper(body, model)
    return await serve(request, [call], shaper, body.stream, body.include_usage)
