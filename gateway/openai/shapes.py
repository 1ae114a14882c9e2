"""Tiger's events in OpenAI's objects: finish reasons, usage, and log-probabilities
in the chat shape (`content: [{token, logprob, bytes, top_logprobs}]`) and the
legacy completions shape (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tiger_grpc.api.events import StopReason
from tiger_grpc.api.events import TokenLogprob as Token

from .objects import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    CompletionLogprobs,
    CompletionUsage,
    Finish,
    PromptTokensDetails,
    TextCompletion,
    TokenLogprob,
    TopLogprob,
)

FINISH: dict[StopReason, Finish] = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
}


@dataclass
class Reply:
    """What every object of one answer shares: its id, time and model."""

    kind: str  # "chatcmpl" or "cmpl"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.kind}-{uuid.uuid4().hex}"

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model}


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int
) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


def chat_logprobs(tokens: Sequence[Token]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=t.token,
                logprob=t.logprob if t.logprob is not None else 0.0,
                bytes=list(t.bytes),
                top_logprobs=[
                    TopLogprob(token=a.token, logprob=a.logprob, bytes=list(a.bytes))
                    for a in t.top
                ],
            )
            for t in tokens
        ]
    )


def chars(data: bytes) -> int:
    """How many characters start in `data` (UTF-8 lead bytes): a token's share of
    its text's length, a character counted once, where it starts."""
    return sum(1 for b in data if b & 0xC0 != 0x80)


def completion_logprobs(
    tokens: Sequence[Token], offset: int
) -> tuple[CompletionLogprobs, int]:
    """The legacy shape for `tokens` whose text starts at character `offset` of the
    choice's text; returns it and the offset after them."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += chars(t.bytes)
    shape = CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[
            None if t.logprob is None else {a.token: a.logprob for a in t.top}
            for t in tokens
        ],
        text_offset=offsets,
    )
    return shape, offset


class ChunkMaker:
    """What both answers' shapers share: chunks of `chunk_kind` (null `usage` on
    each when the request asked for it), and the usage chunk that ends them."""

    chunk_kind: type[ChatCompletionChunk] | type[TextCompletion]
    reply: Reply
    include_usage: bool

    def _usage(self) -> CompletionUsage:
        raise NotImplementedError

    def _wrap(self, choice: Any) -> dict[str, Any]:
        chunk = self.chunk_kind(**self.reply.fields(), choices=[choice])
        if self.include_usage:
            chunk.usage = None  # set: null on every chunk but the last
        return chunk.dump()

    def usage_chunk(self) -> dict[str, Any]:
        kind = self.chunk_kind
        return kind(**self.reply.fields(), choices=[], usage=self._usage()).dump()
