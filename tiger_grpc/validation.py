"""Request validation in one place, shared by the gRPC service and the HTTP gateway.

The gateway parses JSON bodies with `parse_generate_body` (strict types, no silent
coercion); the gRPC service builds the same `GenerateParams` from the protobuf
message. Both then call `check_generate_params`, so every range error reads the
same on both protocols.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument

ROLES = ("system", "user", "assistant")
MAX_MODEL_ID_CHARS = 128
MAX_TOKENS_LIMIT = 1_000_000
MAX_TEMPERATURE = 100.0
INT32_MAX = 2**31 - 1
SEED_LIMIT = 2**64
MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerateParams:
    """A generation request after validation; what the engine sees."""

    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_sequences: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None


def _is_int(value: Any) -> bool:
    """An integer as JSON Schema (and so the OpenAPI document) defines it: `5` or `5.0`,
    never `5.5`, `"5"` or `true` (JSON booleans arrive as Python bools, which are ints)."""
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) else value


def _as_float32(value: float) -> float:
    """The value as the gRPC request carries it (a 32-bit float), so both protocols
    judge the same number (1e-308 is 0.0 on the wire)."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


# JSON field kinds: what the value must be, how it reads in messages, and the
# Python value it becomes.
_KINDS: dict[str, tuple[Any, str, Any]] = {
    "boolean": (lambda v: isinstance(v, bool), "a boolean", lambda v: v),
    "string": (lambda v: isinstance(v, str), "a string", lambda v: v),
    "integer": (_is_int, "an integer", _as_int),
    "number": (_is_number, "a number", lambda v: _as_float32(float(v))),
}


def _optional(source: dict[str, Any], name: str, kind: str, label: str = "") -> Any:
    """`source[name]` checked and converted as `kind`, or None when absent or null."""
    value = source.get(name)
    if value is None:
        return None
    check, expected, convert = _KINDS[kind]
    if not check(value):
        raise _wrong_type(label or name, expected, value)
    return convert(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_int(value):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _wrong_type(name: str, expected: str, value: Any) -> InvalidArgument:
    return InvalidArgument(f"`{name}` must be {expected}, got {_type_name(value)}")


def _messages_from_json(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list):
        raise _wrong_type("messages", "an array of {role, content} objects", value)
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _wrong_type(
                f"messages[{i}]", "an object with `role` and `content`", item
            )
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str):
            raise _wrong_type(f"messages[{i}].role", "a string", role)
        if not isinstance(content, str):
            raise _wrong_type(f"messages[{i}].content", "a string", content)
        messages.append(ChatMessage(role=role, content=content))
    return tuple(messages)


def parse_generate_body(body: Any) -> GenerateParams:
    """Builds validated params from a decoded JSON body; raises `InvalidArgument`."""
    if not isinstance(body, dict):
        raise InvalidArgument(
            f"the request body must be a JSON object, got {_type_name(body)}"
        )
    if "model" not in body:
        raise InvalidArgument("`model` is required")
    model = body["model"]
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if "messages" not in body:
        raise InvalidArgument("`messages` is required")
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": _messages_from_json(body["messages"]),
    }

    for name, kind in (
        ("stream", "boolean"),
        ("max_tokens", "integer"),
        ("temperature", "number"),
        ("top_p", "number"),
        ("top_k", "integer"),
        ("seed", "integer"),
    ):
        value = _optional(body, name, kind)
        if value is not None:
            kwargs[name] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _wrong_type("stop_sequences", "an array of strings", stops)
        kwargs["stop_sequences"] = tuple(stops)
    params = GenerateParams(**kwargs)
    check_generate_params(params)
    return params


def check_generate_params(p: GenerateParams) -> None:
    """Range checks common to both protocols; raises `InvalidArgument`."""
    if not p.model.strip():
        raise InvalidArgument(
            "`model` must be a non-empty model id (see GET /v1/models)"
        )
    if len(p.model) > MAX_MODEL_ID_CHARS:
        raise InvalidArgument(
            f"`model` must be at most {MAX_MODEL_ID_CHARS} characters"
        )
    if not p.messages:
        raise InvalidArgument("`messages` must contain at least one message")
    for i, m in enumerate(p.messages):
        if m.role not in ROLES:
            raise InvalidArgument(
                f"`messages[{i}].role` must be one of {', '.join(ROLES)}, got {m.role!r}"
            )
    if p.max_tokens is not None and not 1 <= p.max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidArgument(
            f"`max_tokens` must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {p.max_tokens}"
        )
    if not math.isfinite(p.temperature) or not 0.0 <= p.temperature <= MAX_TEMPERATURE:
        raise InvalidArgument(
            f"`temperature` must be a number from 0 to {MAX_TEMPERATURE:g} "
            f"(0 is greedy), got {p.temperature}"
        )
    if not math.isfinite(p.top_p) or not 0.0 < p.top_p <= 1.0:
        raise InvalidArgument(f"`top_p` must be a number in (0, 1], got {p.top_p}")
    if not 0 <= p.top_k <= INT32_MAX:
        raise InvalidArgument(
            f"`top_k` must be an integer from 0 (off) to {INT32_MAX}, got {p.top_k}"
        )
    if p.seed is not None and not 0 <= p.seed < SEED_LIMIT:
        raise InvalidArgument(
            f"`seed` must be an integer from 0 to 2**64 - 1, got {p.seed}"
        )
    if len(p.stop_sequences) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(
            f"`stop_sequences` may hold at most {MAX_STOP_SEQUENCES} strings, "
            f"got {len(p.stop_sequences)}"
        )
    for i, s in enumerate(p.stop_sequences):
        if not 1 <= len(s) <= MAX_STOP_SEQUENCE_CHARS:
            raise InvalidArgument(
                f"`stop_sequences[{i}]` must be 1 to {MAX_STOP_SEQUENCE_CHARS} characters long"
            )


MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
MAX_EXAMPLES = 10_000
METHODS = ("lora", "full")


@dataclass(frozen=True)
class TrainParams:
    """A training request after validation."""

    model: str
    output_model: str
    examples: tuple[tuple[ChatMessage, ...], ...]
    stream: bool = False
    method: str = "lora"
    epochs: int = 3
    max_steps: int | None = None
    learning_rate: float | None = None  # None: the method's default
    batch_size: int = 4
    lora_rank: int = 16
    seed: int = 0


TRAIN_LIMITS: dict[str, tuple[float, float]] = {
    "epochs": (1, 1000),
    "max_steps": (1, 1_000_000),
    "batch_size": (1, 256),
    "lora_rank": (1, 512),
}


def parse_train_body(body: Any) -> TrainParams:
    """Builds validated training params from a decoded JSON body."""
    if not isinstance(body, dict):
        raise InvalidArgument(
            f"the request body must be a JSON object, got {_type_name(body)}"
        )
    for name in ("model", "output_model"):
        if name not in body:
            raise InvalidArgument(f"`{name}` is required")
        if not isinstance(body[name], str):
            raise _wrong_type(name, "a string", body[name])
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise _wrong_type("examples", "an array of {messages: [...]} objects", examples)
    parsed = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict) or "messages" not in example:
            raise _wrong_type(f"examples[{i}]", "an object with `messages`", example)
        try:
            parsed.append(_messages_from_json(example["messages"]))
        except InvalidArgument as exc:
            raise InvalidArgument(
                exc.message.replace("`messages", f"`examples[{i}].messages")
            ) from None
    kwargs: dict[str, Any] = {
        "model": body["model"],
        "output_model": body["output_model"],
        "examples": tuple(parsed),
    }
    if (stream := _optional(body, "stream", "boolean")) is not None:
        kwargs["stream"] = stream
    hyper = body.get("hyperparameters")
    if hyper is not None:
        if not isinstance(hyper, dict):
            raise _wrong_type("hyperparameters", "an object", hyper)
        kinds = {
            name: "integer"
            for name in ("epochs", "max_steps", "batch_size", "lora_rank", "seed")
        }
        kinds.update(learning_rate="number", method="string")
        for name, kind in kinds.items():
            value = _optional(hyper, name, kind, f"hyperparameters.{name}")
            if value is not None:
                kwargs[name] = value
    params = TrainParams(**kwargs)
    check_train_params(params)
    return params


def check_train_params(p: TrainParams) -> None:
    """Range checks for training, common to both protocols; raises `InvalidArgument`."""
    if not p.model.strip():
        raise InvalidArgument(
            "`model` must be a non-empty model id (see GET /v1/models)"
        )
    if not MODEL_ID_PATTERN.fullmatch(p.output_model.strip().lower()):
        raise InvalidArgument(
            "`output_model` must be 1 to 128 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, got {p.output_model!r}"
        )
    if not p.examples:
        raise InvalidArgument("`examples` must contain at least one conversation")
    if len(p.examples) > MAX_EXAMPLES:
        raise InvalidArgument(
            f"`examples` may hold at most {MAX_EXAMPLES} conversations"
        )
    for i, messages in enumerate(p.examples):
        for j, m in enumerate(messages):
            if m.role not in ROLES:
                raise InvalidArgument(
                    f"`examples[{i}].messages[{j}].role` must be one of {', '.join(ROLES)}, "
                    f"got {m.role!r}"
                )
        if not any(m.role == "assistant" for m in messages):
            raise InvalidArgument(
                f"`examples[{i}]` has no assistant turn: the loss is computed on assistant "
                "turns, so each example needs at least one"
            )
    if p.method not in METHODS:
        raise InvalidArgument(
            f"`hyperparameters.method` must be one of {', '.join(METHODS)}, "
            f"got {p.method!r}"
        )
    for name, (low, high) in TRAIN_LIMITS.items():
        value = getattr(p, name)
        if value is not None and not low <= value <= high:
            raise InvalidArgument(
                f"`hyperparameters.{name}` must be an integer from {low:g} to {high:g}, got {value}"
            )
    if p.learning_rate is not None and (
        not math.isfinite(p.learning_rate) or not 0 < p.learning_rate <= 1
    ):
        raise InvalidArgument(
            f"`hyperparameters.learning_rate` must be a number in (0, 1], got {p.learning_rate}"
        )
    if not 0 <= p.seed < SEED_LIMIT:
        raise InvalidArgument(
            f"`hyperparameters.seed` must be an integer from 0 to 2**64 - 1, got {p.seed}"
        )
