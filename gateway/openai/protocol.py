"""OpenAI's request shapes, declared once: validation (strict JSON, messages naming
the field, which becomes the error's `param`), the OpenAPI schemas, and the
translation to Tiger's `GenerateParams`.

Supported: chat completions (`messages` with string or text-part content;
`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n`,
`logprobs` + `top_logprobs`, `stream` + `stream_options.include_usage`, `user`,
`frequency_penalty`, `presence_penalty`, and `top_k` and `cache_salt` as
extensions) and legacy completions (`prompt` as a string or a list of strings,
the same sampling fields, `echo`, integer `logprobs`). Refused with a 400 naming
the field, never ignored: tools (`tool_choice` other than none/auto) and tool
messages, `response_format` other than text, `logit_bias`, `suffix`, `best_of`
other than `n`, token-id prompts and non-text content parts. Other unknown fields
are ignored, as OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, model_validator

from tiger_grpc.api.fields import Rule, fail, integer
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

ROLES = {"system": "system", "developer": "system", "user": "user"}
ROLES["assistant"] = "assistant"
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for legacy completions
MAX_PROMPTS = 16
# OpenAI's seed is a signed 64-bit integer; Tiger's is unsigned, so a negative
# one is taken modulo 2**64 (the same bits).
SEED = integer(-(2**63), SEED_MAX, "from -2**63 to 2**64 - 1")


def _text_of(value: Any) -> Any:
    """Message content: a string, or text parts (joined with newlines, as vLLM
    does); anything else is refused by name."""
    if not isinstance(value, list):
        return value  # a string, or what the kind check will refuse
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise fail_at(
                "content",
                f"must be a string or an array of text parts; part {i} is not "
                "{type: text, text: string} (only text is supported)",
            )
        texts.append(part["text"])
    return "\n".join(texts)


CONTENT = Rule(
    "string",
    expected="a string or an array of text parts",
    schema={
        "anyOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "text"],
                    "properties": {
                        "type": {"const": "text"},
                        "text": {"type": "string"},
                    },
                },
            },
        ]
    },
)
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


class OpenAIMessage(RequestModel):
    expected: ClassVar[str] = "an object with `role` and `content`"

    role: Annotated[
        str,
        Rule(
            "string",
            ok=lambda v: v in ROLES,
            message="must be one of system, developer, user, assistant, got "
            "{value} (tool messages come with tool calling, not yet supported)",
            schema={"type": "string", "enum": list(ROLES)},
        ),
    ]
    content: Annotated[str, CONTENT]

    @model_validator(mode="before")
    @classmethod
    def _content_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and "content" in data:
            data = {**data, "content": _text_of(data["content"])}
        if isinstance(data, dict) and data.get("tool_calls"):
            raise fail("has `tool_calls`: tool calling is not supported yet")
        return data


class StreamOptions(RequestModel):
    include_usage: Annotated[bool, BOOLEAN] = False


def _schema(extra: dict[str, Any]) -> Any:
    """Adds to a model's JSON schema what its validators refuse: the fields Tiger
    does not do yet, and the rules between fields (JSON Schema's if/then)."""

    def add(schema: dict[str, Any]) -> None:
        schema["properties"].update(extra.get("properties", {}))
        schema.setdefault("allOf", []).extend(extra.get("allOf", []))

    return add


REFUSED = {
    "tools": {"type": ["array", "null"], "maxItems": 0},
    "functions": {"type": ["array", "null"], "maxItems": 0},
    "tool_choice": {"enum": ["none", "auto", None]},
    "logit_bias": {"type": ["object", "null"], "maxProperties": 0},
    "response_format": {
        "anyOf": [
            {"type": "null"},
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"const": "text"}},
                "additionalProperties": False,
            },
        ]
    },
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

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        """Fields that would change the answer and that Tiger does not do yet."""
        if not isinstance(data, dict):
            return data
        if data.get("logit_bias"):
            raise _at("logit_bias", "is not supported")
        if data.get("tools") or data.get("functions"):
            raise _at("tools", "are not supported yet (tool calling)")
        if data.get("tool_choice") not in (None, "none", "auto"):
            raise _at("tool_choice", "is not supported yet (tool calling)")
        response_format = data.get("response_format")
        if response_format not in (None, {"type": "text"}):
            raise _at("response_format", "other than {type: text} is not supported yet")
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
        }


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(
        json_schema_extra=_schema(
            {
                "properties": REFUSED,
                "allOf": [
                    _needs(
                        "top_logprobs",
                        {"type": "integer", "minimum": 1},
                        {
                            "required": ["logprobs"],
                            "properties": {"logprobs": {"const": True}},
                        },
                    )
                ],
            }
        )
    )

    messages: Annotated[tuple[OpenAIMessage, ...], *MESSAGES]
    max_tokens: Annotated[int, TOKENS] | None = None
    max_completion_tokens: Annotated[int, TOKENS] | None = None
    logprobs: Annotated[bool, BOOLEAN] = False
    top_logprobs: Annotated[int, TOP_LOGPROBS] | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise _at("top_logprobs", "needs `logprobs: true`")
        return self

    def params(self) -> GenerateParams:
        """Tiger's params for this request."""
        turns = [{"role": ROLES[m.role], "content": m.content} for m in self.messages]
        return validated(
            GenerateParams,
            {
                **self._common(),
                "messages": turns,
                "max_tokens": self.max_completion_tokens or self.max_tokens,
                "logprobs": self.logprobs,
                "top_logprobs": self.top_logprobs or 0,
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
