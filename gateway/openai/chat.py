"""POST /v1/chat/completions: one Generate call with `n` choices, answered as one
`chat.completion` object or as `chat.completion.chunk` Server-Sent Events."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.events import Delta, Stop, StopReason
from tiger_grpc.api.toolcalls import CallStart, Content, Piece, ToolCallReader
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
    FunctionCall,
    FunctionDelta,
    ToolCall,
    ToolCallDelta,
)
from .protocol import ChatCompletionRequest
from .serve import serve
from .shapes import FINISH, ChunkMaker, Reply, chat_logprobs, usage

log = logging.getLogger(__name__)


class ChatShaper(ChunkMaker):
    """Builds the chunks (streaming) and the final object (not) of one answer.
    When tools are offered, each choice's text is read for calls (`ToolCallReader`):
    they go out as `tool_calls`, the rest as content."""

    chunk_kind = ChatCompletionChunk

    def __init__(
        self, body: ChatCompletionRequest, model: str, tools_offered: bool
    ) -> None:
        self.reply = Reply("chatcmpl", model)
        self.logprobs = body.logprobs
        self.include_usage = body.include_usage
        self.readers = [
            ToolCallReader() if tools_offered else None for _ in range(body.n)
        ]
        self.texts: list[list[str]] = [[] for _ in range(body.n)]
        self.calls: list[list[list[str]]] = [[] for _ in range(body.n)]
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
            i = event.index
            self.tokens[i].extend(event.logprobs)
            reader, text = self.readers[i], event.text
            pieces: list[Piece] = (
                [Content(text)] if reader is None else reader.feed(text)
            )
            deltas = self._deltas(i, pieces)
            logprobs = chat_logprobs(event.logprobs) if self.logprobs else None
            if logprobs is not None and not deltas:
                deltas = [ChunkDelta()]  # the tokens' log-probabilities are owed
            return [
                self._chunk(i, delta, logprobs if k == 0 else None)
                for k, delta in enumerate(deltas)
            ]
        if isinstance(event, Stop):
            i = event.index
            reader = self.readers[i]
            tail = self._deltas(i, reader.finish() if reader is not None else [])
            finish = FINISH[event.stop_reason]
            if self.calls[i] and event.stop_reason is StopReason.END_TURN:
                finish = "tool_calls"
            self.finish[i] = finish
            self.prompt_tokens = event.usage.input_tokens
            self.completion_tokens += event.usage.output_tokens
            if i == 0:  # the prompt is counted once, with its first choice
                self.cached_tokens = event.usage.cached_tokens
            last = self._chunk(i, ChunkDelta(), finish=finish)
            return [*(self._chunk(i, delta) for delta in tail), last]
        return []

    def _deltas(self, i: int, pieces: list[Piece]) -> list[ChunkDelta]:
        """Choice `i`'s pieces as deltas (recorded for the final object too)."""
        deltas = []
        for piece in pieces:
            if isinstance(piece, Content):
                if piece.text:
                    self.texts[i].append(piece.text)
                    deltas.append(ChunkDelta(content=piece.text))
            elif isinstance(piece, CallStart):
                call_id = f"call_{uuid.uuid4().hex[:24]}"
                self.calls[i].append([call_id, piece.name, ""])
                function = FunctionDelta(name=piece.name, arguments="")
                deltas.append(_call_delta(piece.index, function, call_id))
            else:
                self.calls[i][piece.index][2] += piece.text
                function = FunctionDelta(arguments=piece.text)
                deltas.append(_call_delta(piece.index, function))
        return deltas

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

    def _message(self, i: int) -> AssistantMessage:
        content = "".join(self.texts[i])
        if not self.calls[i]:
            return AssistantMessage(content=content)
        calls = [
            ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
            for call_id, name, arguments in self.calls[i]
        ]
        return AssistantMessage(content=content or None, tool_calls=calls)

    def final(self) -> dict[str, Any]:
        choices = [
            ChatChoice(
                index=i,
                message=self._message(i),
                logprobs=chat_logprobs(self.tokens[i]) if self.logprobs else None,
                finish_reason=self.finish[i],
            )
            for i in range(len(self.texts))
        ]
        return ChatCompletion(
            **self.reply.fields(), choices=choices, usage=self._usage()
        ).dump()


def _call_delta(
    index: int, function: FunctionDelta, call_id: str | None = None
) -> ChunkDelta:
    """A delta of tool call `index`: its first (id, type and name) or a fragment
    of its arguments."""
    if call_id is None:
        return ChunkDelta(tool_calls=[ToolCallDelta(index=index, function=function)])
    call = ToolCallDelta(index=index, id=call_id, type="function", function=function)
    return ChunkDelta(tool_calls=[call])


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
    shaper = ChatShaper(body, model, params.calls_tools)
    return await serve(request, [call], shaper, body.stream, body.include_usage)
