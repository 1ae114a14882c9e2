"""POST /v1/completions (legacy): one Generate call per prompt, each with `n`
choices (choice `prompt * n + i`), answered as one `text_completion` object or as
Server-Sent Events. `echo` puts the prompt before each choice's text, and with
`logprobs` the prompt tokens' log-probabilities (the first one null) before its
tokens'; `echo` with `max_tokens: 0` scores a prompt, as lm-evaluation-harness
does through an API."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from tiger_grpc.api.errors import InvalidArgumentError
from tiger_grpc.api.events import Delta, PromptLogprobs, Stop, TokenLogprob
from tiger_grpc.api.wire import params_to_pb

from ..auth import Reject, call_metadata
from ..backend import BACKEND
from ..bodies import read_body
from ..config import CONFIG
from ..native import MODEL_KEY
from .errors import error_response
from .objects import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionUsage,
    Finish,
    TextCompletion,
)
from .protocol import CompletionRequest
from .serve import serve
from .shapes import FINISH, ChunkMaker, Reply, completion_logprobs, usage

log = logging.getLogger(__name__)


class CompletionShaper(ChunkMaker):
    chunk_kind = TextCompletion

    def __init__(self, body: CompletionRequest, model: str) -> None:
        self.reply = Reply("cmpl", model)
        self.prompts, self.n, self.echo = body.prompt, body.n, body.echo
        self.logprobs = body.logprobs is not None
        self.include_usage = body.include_usage
        count = len(self.prompts) * self.n
        self.texts: list[list[str]] = [[] for _ in range(count)]
        self.tokens: list[list[TokenLogprob]] = [[] for _ in range(count)]
        self.offsets = [0] * count
        self.started = [False] * count
        self.finish: list[Finish | None] = [None] * count
        self.prompt_logprobs: dict[int, tuple[TokenLogprob, ...]] = {}
        # With echo and logprobs, a prompt's choices wait for its scores.
        self.waiting: dict[int, list[Any]] = (
            {p: [] for p in range(len(self.prompts))} if self._scored else {}
        )
        self.prompt_tokens = [0] * len(self.prompts)
        self.cached_tokens = [0] * len(self.prompts)

        self.completion_tokens = 0

    @property
    def _scored(self) -> bool:
        return self.echo and self.logprobs

    def start(self) -> list[dict[str, Any]]:
        return []

    def on_event(self, position: int, event: Any) -> list[dict[str, Any]]:
        if isinstance(event, PromptLogprobs):
            self.prompt_logprobs[position] = event.tokens
            held = self.waiting.pop(position, [])
            return [c for e in held for c in self.on_event(position, e)]
        if isinstance(event, Delta | Stop) and position in self.waiting:
            self.waiting[position].append(event)
            return []
        if isinstance(event, Delta):
            choice = position * self.n + event.index
            return [self._text(choice, position, event.text, list(event.logprobs))]
        if isinstance(event, Stop):
            choice = position * self.n + event.index
            self.prompt_tokens[position] = event.usage.input_tokens
            self.completion_tokens += event.usage.output_tokens
            if event.index == 0:  # each prompt is counted once
                self.cached_tokens[position] = event.usage.cached_tokens
            self.finish[choice] = FINISH[event.stop_reason]
            return [self._text(choice, position, "", [], self.finish[choice])]
        return []

    def _text(
        self,
        choice: int,
        position: int,
        text: str,
        tokens: list[TokenLogprob],
        finish: Finish | None = None,
    ) -> dict[str, Any]:
        if not self.started[choice]:
            self.started[choice] = True
            if self.echo:
                text = self.prompts[position] + text
                tokens = [*self.prompt_logprobs.get(position, ()), *tokens]
        self.texts[choice].append(text)
        self.tokens[choice].extend(tokens)
        logprobs: CompletionLogprobs | None = None
        if self.logprobs:
            logprobs, self.offsets[choice] = completion_logprobs(
                tokens, self.offsets[choice]
            )
        return self._chunk(choice, text, logprobs, finish)

    def _chunk(
        self,
        index: int,
        text: str,
        logprobs: CompletionLogprobs | None,
        finish: Finish | None,
    ) -> dict[str, Any]:
        choice = CompletionChoice(
            text=text, index=index, logprobs=logprobs, finish_reason=finish
        )
        return self._wrap(choice)

    def _usage(self) -> CompletionUsage:
        return usage(
            sum(self.prompt_tokens), self.completion_tokens, sum(self.cached_tokens)
        )

    def final(self) -> dict[str, Any]:
        choices = [
            CompletionChoice(
                text="".join(parts),
                index=i,
                logprobs=completion_logprobs(self.tokens[i], 0)[0]
                if self.logprobs
                else None,
                finish_reason=self.finish[i],
            )
            for i, parts in enumerate(self.texts)
        ]
        return TextCompletion(
            **self.reply.fields(), choices=choices, usage=self._usage()
        ).dump()


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions."""
    try:
        metadata = call_metadata(request, request.app[CONFIG])
        body = await read_body(request, CompletionRequest)
        params = [body.params(prompt) for prompt in body.prompt]
    except Reject as reject:
        return error_response(reject.status, reject.message)
    except InvalidArgumentError as exc:
        return error_response(exc.status, exc.message)
    model = request[MODEL_KEY] = body.model.strip().lower()
    if body.user:
        log.info("completion for user %r", body.user[:128])
    tiger = request.app[BACKEND].tiger
    calls = [tiger.Generate(params_to_pb(p), metadata=metadata) for p in params]
    shaper = CompletionShaper(body, model)
    return await serve(request, calls, shaper, body.stream, body.include_usage)
