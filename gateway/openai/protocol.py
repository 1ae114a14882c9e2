"""OpenAI's request shapes, declared once: validation (strict JSON, messages naming
the field, which becomes the error's `param`), the OpenAPI schemas, and the
translation to Tiger's `GenerateParams`.

Supported: chat completions (`messages` with string or text-part content, an
assistant's `tool_calls` and `tool` messages; `max_tokens`/`max_completion_tokens`,
`temperature`, `top_p`, `seed`, `stop`, `n`, `logprobs` + `top_logprobs`, `stream`
+ `stream_options.include_usage`, `user`, `frequency_penalty`,
`presence_penalty`, `response_format`, `tools`, `tool_choice`,
`parallel_tool_calls`, and `top_k` and `cache_salt` as extensions) and legacy
completions (`prompt` as a string or a list of strings, the same sampling fields
and `response_format`, `echo`, integer `logprobs`). Refused with a 400 naming the
field, never ignored: the deprecated `functions` and `function_call`,
`logit_bias`, `suffix`, `best_of` other than `n`, token-id prompts and non-text
content parts. Other unknown fields are ignored, as OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, model_validator

from tiger_grpc.api.fields import Rule, integer
from tiger_grpc.api.formats import TOOL_CHOICE, ResponseFormat
from tiger_grpc.api.params import (
    BOOLEAN,
    CACHE_SALT,
    MAX_CHOICES,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_LIMIT,
    MESSAGES,
    MODEL_ID,
    PENALTY,
    PROBABILITY,
    SEED_MAX,
    STOP_SEQUENCES,
    STRING,
    TEMPERATURE,
    TOP_K,
    TOP_LOGPROBS,
    GenerateParams,
    RequestModel,
    fail_at,
    validated,
)

from .messages import OpenAIMessage, OpenAITool, named_choice

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for legacy completions
MAX_PROMPTS = 16
# OpenAI's seed is a signed 64-bit integer; Tiger's is unsigned, so a negative
# one is taken modulo 2**64 (the same bits).
SEED = integer(-(2**63), SEED_MAX, "from -2**63 to 2**64 - 1")


STOP = Rule(
    "string or strings",
    expected="a string or an array of strings",
    ok=lambda v: len(v) <= MAX_STOP_SEQUENCES
    and all(1 <= len(s) <= MAX_STOP_SEQUENCE_CHARS for s in v),
    message=f"must be at most {MAX_STOP_SEQUENCES} strings of 1 to "
    f"{MAX_STOP_SEQUENCE_CHARS} characters",
    schema={"anyOf": [STOP_SEQUENCES.schema["items"], STOP_SEQUENCES.schema]},
)
TOKENS = integer(1, MAX_TOKENS_LIMIT, f"from 1 to {MAX_TOKENS_LIMIT}")


class StreamOptions(RequestModel):
    include_usage: Annotated[bool, BOOLEAN] = False


def _schema(extra: dict[str, Any]) -> Any:
    """Adds to a model's JSON schema what its validators refuse: the fields Tiger
    does not do yet, and the rules between fields (JSON Schema's if/then)."""

    def add(schema: dict[str, Any]) -> None:
        schema["properties"].update(extra.get("properties", {}))
        for internal in extra.get("hidden", ()):
            schema["properties"].pop(internal, None)
        schema.setdefault("allOf", []).extend(extra.get("allOf", []))

    return add


REFUSED = {
    "functions": {"type": ["array", "null"], "maxItems": 0},
    "function_call": {"type": "null"},
    "logit_bias": {"type": ["object", "null"], "maxProperties": 0},
}


TOOL_CHOICE_SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {"type": "string", "enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                    "description": "One of `tools`",
                },
            },
        },
    ]
}


def _needs(field: str, test: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema for: when `field` passes `test`, the object must pass `then`."""
    return {
        "if": {"required": [field], "properties": {field: test}},
        "then": then,
    }


class _Sampling(RequestModel):
    """What both routes share."""

    expected: ClassVar[str] = "a JSON object"

    model: Annotated[str, *MODEL_ID]
    # Unset or null: the model's defaults (`/v1/models` shows them).
    temperature: Annotated[float, TEMPERATURE] | None = None
    top_p: Annotated[float, PROBABILITY] | None = None
    top_k: Annotated[int, TOP_K] | None = None
    seed: Annotated[int, SEED] | None = None
    stop: Annotated[tuple[str, ...], STOP] = ()
    n: Annotated[int, integer(1, MAX_CHOICES, f"from 1 to {MAX_CHOICES}")] = 1
    stream: Annotated[bool, BOOLEAN] = False
    stream_options: StreamOptions | None = None
    frequency_penalty: Annotated[float, PENALTY] = 0.0
    presence_penalty: Annotated[float, PENALTY] = 0.0
    user: Annotated[str, STRING] | None = None  # accepted, logged
    cache_salt: Annotated[str, CACHE_SALT] = ""  # an extension, as vLLM's
    # json_object, json_schema, and Tiger's regex and choice (text: free).
    response_format: ResponseFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        """Fields that would change the answer and that Tiger does not do yet."""
        if not isinstance(data, dict):
            return data
        if data.get("logit_bias"):
            raise _at("logit_bias", "is not supported")
        for old in ("functions", "function_call"):
            if data.get(old) not in (None, []):
                raise _at(old, "is deprecated and not supported: use `tools`")
        return data

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _common(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": None if self.seed is None else self.seed % (SEED_MAX + 1),
            "stop_sequences": list(self.stop),
            "n": self.n,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "stream": self.stream,
            "cache_salt": self.cache_salt,
            "response_format": self.response_format,
        }


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(
        json_schema_extra=_schema(
            {
                "properties": {**REFUSED, "tool_choice": TOOL_CHOICE_SCHEMA},
                "hidden": ["tool_function"],
                "allOf": [
                    _needs(
                        "top_logprobs",
                        {"type": "integer", "minimum": 1},
                        {
                            "required": ["logprobs"],
                            "properties": {"logprobs": {"const": True}},
                        },
                    ),
                    _needs(
                        "tool_choice",
                        {"not": {"enum": ["none", "auto", None]}},
                        {
                            "required": ["tools"],
                            "properties": {"tools": {"minItems": 1}},
                        },
                    ),
                ],
            }
        )
    )

    messages: Annotated[tuple[OpenAIMessage, ...], *MESSAGES]
    max_tokens: Annotated[int, TOKENS] | None = None
    max_completion_tokens: Annotated[int, TOKENS] | None = None
    logprobs: Annotated[bool, BOOLEAN] = False
    top_logprobs: Annotated[int, TOP_LOGPROBS] | None = None
    tools: tuple[OpenAITool, ...] = ()
    # none, auto (the default), required, or {type: function, function: {name}}.
    tool_choice: Annotated[str, TOOL_CHOICE] | None = None
    tool_function: Annotated[str, STRING] | None = None  # from a named choice
    parallel_tool_calls: Annotated[bool, BOOLEAN] = True

    @model_validator(mode="before")
    @classmethod
    def _tool_choice(cls, data: Any) -> Any:
        return named_choice(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise _at("top_logprobs", "needs `logprobs: true`")
        return self

    def params(self) -> GenerateParams:
        """Tiger's params for this request."""
        return validated(
            GenerateParams,
            {
                **self._common(),
                "messages": [m.turn() for m in self.messages],
                "max_tokens": self.max_completion_tokens or self.max_tokens,
                "logprobs": self.logprobs,
                "top_logprobs": self.top_logprobs or 0,
                "tools": [t.function.model_dump(exclude_none=True) for t in self.tools],
                "tool_choice": self.tool_choice or "auto",
                "tool_function": self.tool_function,
                "parallel_tool_calls": self.parallel_tool_calls,
            },
        )


class CompletionRequest(_Sampling):
    """POST /v1/completions (legacy): each prompt gets `n` choices."""

    model_config = ConfigDict(
        json_schema_extra=_schema(
            {
                "properties": {
                    **REFUSED,
                    "suffix": {"type": ["string", "null"], "maxLength": 0},
                    "best_of": {"enum": [1, None]},
                },
                "allOf": [
                    _needs(
                        "max_tokens",
                        {"const": 0},
                        {"required": ["echo"], "properties": {"echo": {"const": True}}},
                    )
                ],
            }
        )
    )

    prompt: Annotated[
        tuple[str, ...],
        Rule(
            "string or strings",
            expected="a string or an array of strings (token-id prompts are not "
            "supported)",
            ok=lambda v: 1 <= len(v) <= MAX_PROMPTS,
            message=f"must hold 1 to {MAX_PROMPTS} prompts",
            schema={
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_PROMPTS,
                        "items": {"type": "string"},
                    },
                ]
            },
        ),
    ]
    max_tokens: Annotated[
        int, integer(0, MAX_TOKENS_LIMIT, f"from 0 to {MAX_TOKENS_LIMIT}")
    ] = DEFAULT_COMPLETION_TOKENS
    echo: Annotated[bool, BOOLEAN] = False
    logprobs: Annotated[int, TOP_LOGPROBS] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_refused(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("suffix"):
                raise _at("suffix", "is not supported")
            best_of = data.get("best_of")
            if best_of not in (None, 1, data.get("n", 1)):
                raise _at("best_of", "is not supported (other than 1 or `n`)")
        return data

    @model_validator(mode="after")
    def _zero_needs_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise _at("max_tokens", "may be 0 only with `echo: true` (scoring)")
        return self

    def params(self, prompt: str) -> GenerateParams:
        """Tiger's params for one of the request's prompts."""
        wants_logprobs = self.logprobs is not None
        scoring = self.echo and wants_logprobs
        return validated(
            GenerateParams,
            {
                **self._common(),
                "prompt": prompt,
                "max_tokens": self.max_tokens,
                "logprobs": wants_logprobs,
                "top_logprobs": self.logprobs or 0,
                "prompt_logprobs": scoring,
            },
        )


def _at(field: str, message: str) -> Exception:
    return fail_at(field, message)
