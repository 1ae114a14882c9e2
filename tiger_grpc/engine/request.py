"""From validated params to engine `Sequence`s, in one place: the prompt (through
the model's chat template, or raw), the checks that it fits, and per choice the
sampler, the stop criteria, the detokenizer and what to report of log-probabilities."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from typing import Any

import jinja2

from ..api.errors import InvalidArgumentError
from ..api.formats import Tool
from ..api.params import ChatMessage, GenerateParams, Turn
from .chat import TemplateError
from .detok import IncrementalDetokenizer
from .grammar import Constraint
from .sampling import Sampler, SamplingParams
from .sequence import Sequence
from .stopping import StopSequenceMatcher, TokenStopper
from .tokens import TokenTexts
from .toolprompt import knows_tools, template_turns, tool_schema


def render_prompt(
    tokenizer: Any, messages: Seq[ChatMessage], tools: Seq[Tool] = ()
) -> list[int]:
    """The prompt's token ids, through the model's own chat template (with the
    `tools` offered, and the turns of earlier calls: `toolprompt`)."""
    native = knows_tools(tokenizer)
    turns = template_turns([Turn.of(m) for m in messages], tools, native)
    offered = {"tools": [tool_schema(t) for t in tools]} if tools and native else {}
    try:
        ids = tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=True, **offered
        )
    except (TemplateError, jinja2.TemplateError) as exc:
        raise InvalidArgumentError(
            f"the model's chat template refused the messages: {exc}"
        ) from None
    return [int(i) for i in ids]


def prompt_ids(tokenizer: Any, params: GenerateParams) -> list[int]:
    """The request's prompt as token ids: its raw `prompt` tokenized as it is (the
    tokenizer's own special tokens, such as a BOS, included), else its `messages`
    through the chat template."""
    if params.prompt is None:
        offered = params.tools if params.calls_tools else ()
        return render_prompt(tokenizer, params.messages, offered)
    ids = [int(i) for i in tokenizer.encode(params.prompt)]
    if not ids:
        raise InvalidArgumentError("`prompt` is empty: it gives no tokens")
    return ids


def room_after(
    prompt_ids: list[int], model_id: str, limit: int, what: str, need: int = 1
) -> int:
    """Tokens left for the output once the prompt is in `limit` (the model's `what`,
    e.g. its context length); a prompt that leaves fewer than `need` (0 when
    nothing is to be generated) is an `InvalidArgumentError`."""
    room = limit - len(prompt_ids)
    if room < need:
        raise InvalidArgumentError(
            f"the prompt is {len(prompt_ids)} tokens after the chat template; "
            f"{model_id} fits at most {limit - need} prompt tokens ({what} {limit})"
        )
    return room


def new_sequences(
    params: GenerateParams,
    prompt: list[int],
    *,
    tokenizer: Any,
    eos_token_ids: Iterable[int],
    room: int,
    default_max_tokens: int,
    texts: TokenTexts | None = None,
    received_at: float | None = None,
    sampling: Mapping[str, float] | None = None,
    constraint: Constraint | None = None,
) -> list[Sequence]:
    """The engine's form of a request: one sequence per choice (choice i samples
    with seed + i; the first scores the prompt when asked). `max_tokens` (or the
    server's default) is clamped to the `room` the prompt leaves; sampling fields
    it leaves unset are the model's defaults (`sampling`); each follows the
    `constraint` (the request's compiled grammar, copied for each) when given."""
    wanted = default_max_tokens if params.max_tokens is None else params.max_tokens
    max_tokens = min(wanted, room)
    received = time.monotonic() if received_at is None else received_at
    eos = frozenset(eos_token_ids)
    return [
        Sequence(
            prompt_ids=prompt,
            sampler=Sampler(SamplingParams.of(params, choice, sampling)),
            stopper=TokenStopper(eos, max_tokens),
            stop_matcher=StopSequenceMatcher(params.stop_sequences),
            detokenizer=IncrementalDetokenizer(tokenizer),
            received_at=received,
            index=choice,
            logprobs=params.top_logprobs if params.logprobs else None,
            score_prompt=params.prompt_logprobs and choice == 0,
            prompt_top=params.top_logprobs,
            texts=texts,
            salt=params.cache_salt,
            constraint=None if constraint is None else constraint.copy(),
        )
        for choice in range(params.n)
    ]
