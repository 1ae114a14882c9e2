"""From validated params to an engine `Sequence`, in one place: the prompt through
the model's chat template, the checks that it fits, the sampler, the stop criteria
and the detokenizer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from typing import Any

from ..api.errors import InvalidArgumentError
from ..api.params import ChatMessage, GenerateParams
from .detok import IncrementalDetokenizer
from .sampling import Sampler, SamplingParams
from .sequence import Sequence
from .stopping import StopSequenceMatcher, TokenStopper


def render_prompt(tokenizer: Any, messages: Seq[ChatMessage]) -> list[int]:
    """The prompt's token ids, through the model's own chat template."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    ids = tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, tokenize=True
    )
    return [int(i) for i in ids]


def room_after(prompt_ids: list[int], model_id: str, limit: int, what: str) -> int:
    """Tokens left for the output once the prompt is in `limit` (the model's `what`,
    e.g. its context length); a prompt that leaves none is an `InvalidArgumentError`."""
    room = limit - len(prompt_ids)
    if room < 1:
        raise InvalidArgumentError(
            f"the prompt is {len(prompt_ids)} tokens after the chat template; "
            f"{model_id} fits at most {limit - 1} prompt tokens ({what} {limit})"
        )
    return room


def new_sequence(
    params: GenerateParams,
    prompt_ids: list[int],
    *,
    tokenizer: Any,
    eos_token_ids: Iterable[int],
    room: int,
    default_max_tokens: int,
    received_at: float | None = None,
) -> Sequence:
    """The engine's form of a request: `max_tokens` (or the server's default) is
    clamped to the `room` the prompt leaves."""
    max_tokens = min(params.max_tokens or default_max_tokens, room)
    return Sequence(
        prompt_ids=prompt_ids,
        sampler=Sampler(SamplingParams.of(params)),
        stopper=TokenStopper(eos_token_ids, max_tokens),
        stop_matcher=StopSequenceMatcher(params.stop_sequences),
        detokenizer=IncrementalDetokenizer(tokenizer),
        received_at=time.monotonic() if received_at is None else received_at,
    )
