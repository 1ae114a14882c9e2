"""Request parameters, declared once: the rules both protocols validate with (the
gateway a JSON body, the servicer a protobuf request, so every message reads the
same), and the schemas of the OpenAPI document.

The JSON rules of each field are in `fields`. `null` is the same as absent, and
unknown fields are ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from .fields import (
    BOOLEAN,
    STRING,
    RequestModel,
    Rule,
    fail,
    fail_at,
    integer,
    number,
    one_of,
)
from .fields import (
    validated as validated,  # re-exported: the contract's entry point
)
from .formats import TOOL_CHOICE, ResponseFormat, Tool, ToolCall, check_tools

ROLES = ("system", "user", "assistant")
TURN_ROLES = (*ROLES, "tool")  # a generation's messages may return tool results
METHODS = ("lora", "full")
MAX_MODEL_ID_CHARS = 128
MAX_TOKENS_LIMIT = 1_000_000
MAX_TEMPERATURE = 100.0
INT32_MAX = 2**31 - 1
SEED_MAX = 2**64 - 1
MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256
MAX_EXAMPLES = 10_000
MAX_TRAINING_CHARS = 32 * 2**20  # all the examples' text together
MAX_CHOICES = 16  # n: choices of one request, each its own sequence in the batch
MAX_TOP_LOGPROBS = 20
MAX_CACHE_SALT_CHARS = 256

MODEL_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
MODEL_ID_RULE = (
    "1 to 128 characters of letters, digits, '.', '_' or '-', starting with a "
    "letter or digit"
)
# Numbers travel to the server as 32-bit floats: below this, a positive one is 0.
FLOAT32_TINY = 1e-45


NEW_MODEL_ID = Rule(
    "string",
    ok=lambda v: MODEL_ID_PATTERN.fullmatch(v.strip().lower()) is not None,
    message=f"must be {MODEL_ID_RULE}, got {{value}}",
    schema={"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
)
MODEL_ID = (
    Rule(
        "string",
        ok=lambda v: bool(v.strip()),
        message="must be a non-empty model id (see GET /v1/models)",
    ),
    Rule(
        ok=lambda v: len(v) <= MAX_MODEL_ID_CHARS,
        message=f"must be at most {MAX_MODEL_ID_CHARS} characters",
        schema={
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_MODEL_ID_CHARS,
            # Something but whitespace, as Python's `str.strip` sees it (JSON
            # Schema's own `\S` would let U+001C..U+001F and U+0085 through).
            "pattern": r"[^\s\u001c-\u001f\u0085]",
            "description": "Model id, case-insensitive",
        },
    ),
)
SEED = integer(0, SEED_MAX, "from 0 to 2**64 - 1")
PROBABILITY = number(lambda v: 0.0 < v <= 1.0, "a number in (0, 1]", FLOAT32_TINY, 1)
PENALTY = number(lambda v: -2.0 <= v <= 2.0, "a number from -2 to 2", -2, 2)
CACHE_SALT = Rule(
    "string",
    ok=lambda v: len(v) <= MAX_CACHE_SALT_CHARS,
    message=f"must be at most {MAX_CACHE_SALT_CHARS} characters",
    schema={"type": "string", "maxLength": MAX_CACHE_SALT_CHARS},
)


class ChatMessage(RequestModel):
    expected: ClassVar[str] = "an object with `role` and `content`"

    role: Annotated[str, one_of(ROLES)]
    content: Annotated[str, STRING]

    def __init__(self, role: str | None = None, content: str | None = None, **kw: Any):
        """`ChatMessage("user", "hi")` as well as by keyword."""
        super().__init__(role=role, content=content, **kw)


class Turn(ChatMessage):
    """A message of a generation: besides the guide's, a `tool` message (a tool's
    result, answering the call `tool_call_id`) and an assistant message's
    `tool_calls` (its content may then be empty)."""

    role: Annotated[str, one_of(TURN_ROLES)]
    content: Annotated[str, STRING] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: Annotated[str, STRING] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_message(cls, data: Any) -> Any:
        """A guide's message is a turn too."""
        if isinstance(data, ChatMessage) and not isinstance(data, Turn):
            return {"role": data.role, "content": data.content}
        return data

    @classmethod
    def of(cls, message: ChatMessage) -> Turn:
        """A guide's message (or a training example's) as a turn."""
        return message if isinstance(message, Turn) else cls.model_validate(message)

    @model_validator(mode="after")
    def _tool_fields(self) -> Turn:
        if "content" not in self.model_fields_set and not self.tool_calls:
            raise fail_at("content", "is required (but for an assistant's tool calls)")
        if self.tool_calls and self.role != "assistant":
            raise fail_at("tool_calls", "may come only with `role: assistant`")
        if self.role == "tool" and not self.tool_call_id:
            raise fail_at("tool_call_id", "is required with `role: tool`")
        return self


MESSAGES = (
    Rule(
        "array",
        expected="an array of {role, content} objects",
        ok=bool,
        message="must contain at least one message",
    ),
    Field(json_schema_extra={"minItems": 1}),
)


STOP_SEQUENCE = Rule(
    ok=lambda v: 1 <= len(v) <= MAX_STOP_SEQUENCE_CHARS,
    message=f"must be 1 to {MAX_STOP_SEQUENCE_CHARS} characters long",
)
STOP_SEQUENCES = Rule(
    "strings",
    ok=lambda v: len(v) <= MAX_STOP_SEQUENCES,
    message=f"may hold at most {MAX_STOP_SEQUENCES} strings, got {{value}}",
    shown=len,
    schema={
        "type": "array",
        "maxItems": MAX_STOP_SEQUENCES,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_STOP_SEQUENCE_CHARS,
        },
    },
)


TEMPERATURE = number(
    lambda v: 0.0 <= v <= MAX_TEMPERATURE,
    f"a number from 0 to {MAX_TEMPERATURE:g} (0 is greedy)",
    0,
    MAX_TEMPERATURE,
)
TOP_K = integer(0, INT32_MAX, f"from 0 (off) to {INT32_MAX}")
TOP_LOGPROBS = integer(0, MAX_TOP_LOGPROBS, f"from 0 to {MAX_TOP_LOGPROBS}")


class GuideParams(RequestModel):
    """A request of the guide's API (`/v1/generate_response`): its fields only."""

    expected: ClassVar[str] = "a JSON object"

    model: Annotated[str, *MODEL_ID]
    messages: Annotated[tuple[ChatMessage, ...], *MESSAGES]
    stream: Annotated[bool, BOOLEAN] = False
    max_tokens: (
        Annotated[int, integer(1, MAX_TOKENS_LIMIT, f"from 1 to {MAX_TOKENS_LIMIT}")]
        | None
    ) = None
    # Unset (or null): the model's default (its generation config's), else 1.0,
    # 1.0 and 0 (off).
    temperature: Annotated[float, TEMPERATURE] | None = None
    top_p: Annotated[float, PROBABILITY] | None = None
    top_k: Annotated[int, TOP_K] | None = None
    stop_sequences: Annotated[
        tuple[Annotated[str, STOP_SEQUENCE], ...], STOP_SEQUENCES
    ] = ()
    seed: Annotated[int, SEED] | None = None
    # Prefix caching shares KV only between requests of the same salt.
    cache_salt: Annotated[str, CACHE_SALT] = ""
    # Constrained decoding: the output always matches (when it ends by itself).
    response_format: ResponseFormat | None = None


class GenerateParams(GuideParams):
    """A generation request after validation: what the engine is given. Besides
    the guide's fields, what the OpenAI routes need: a raw `prompt` instead of
    `messages`, `n` choices, log-probabilities, prompt scoring, penalties."""

    messages: Annotated[tuple[Turn, ...], *MESSAGES] = ()
    max_tokens: (
        Annotated[int, integer(0, MAX_TOKENS_LIMIT, f"from 0 to {MAX_TOKENS_LIMIT}")]
        | None
    ) = None  # 0: generate nothing (to score the prompt, or echo it)
    prompt: Annotated[str, STRING] | None = None
    n: Annotated[int, integer(1, MAX_CHOICES, f"from 1 to {MAX_CHOICES}")] = 1
    logprobs: Annotated[bool, BOOLEAN] = False
    top_logprobs: Annotated[int, TOP_LOGPROBS] = 0
    prompt_logprobs: Annotated[bool, BOOLEAN] = False
    frequency_penalty: Annotated[float, PENALTY] = 0.0
    presence_penalty: Annotated[float, PENALTY] = 0.0
    # Tool calling: the functions, whether the model may (`auto`), must
    # (`required`) or must call `tool_function` (`function`) or none of them, and
    # whether it may make several calls in one answer.
    tools: tuple[Tool, ...] = ()
    tool_choice: Annotated[str, TOOL_CHOICE] = "auto"
    tool_function: Annotated[str, STRING] | None = None
    parallel_tool_calls: Annotated[bool, BOOLEAN] = True

    @property
    def calls_tools(self) -> bool:
        """The model is offered tools."""
        return bool(self.tools) and self.tool_choice != "none"

    @model_validator(mode="after")
    def _consistent(self) -> GenerateParams:
        check_tools(self.tools, self.tool_choice, self.tool_function)
        if self.tools and self.prompt is not None:
            raise fail_at("tools", "need `messages` (a chat), not a `prompt`")
        if self.prompt is None and not self.messages:
            raise fail_at("messages", "is required (or a `prompt`)")
        if self.prompt is not None and self.messages:
            raise fail_at("prompt", "cannot go with `messages`: send one of them")

        if self.top_logprobs and not (self.logprobs or self.prompt_logprobs):
            raise fail_at("top_logprobs", "needs `logprobs`")
        return self


class Hyperparameters(RequestModel):
    method: Annotated[str, one_of(METHODS)] = "lora"
    epochs: Annotated[int, integer(1, 1000, "from 1 to 1000")] = 3
    max_steps: Annotated[int, integer(1, 1_000_000, "from 1 to 1000000")] | None = None
    learning_rate: Annotated[float, PROBABILITY] | None = None  # None: the method's
    batch_size: Annotated[int, integer(1, 256, "from 1 to 256")] = 4
    lora_rank: Annotated[int, integer(1, 512, "from 1 to 512")] = 16
    seed: Annotated[int, SEED] = 0


class Conversation(RequestModel):
    """One training example; the loss is computed on its assistant turns."""

    expected: ClassVar[str] = "an object with `messages`"

    messages: Annotated[
        tuple[ChatMessage, ...],
        *MESSAGES,
        Field(
            description="The loss covers the assistant turns",
            json_schema_extra={
                "minItems": 1,
                "contains": {
                    "type": "object",
                    "properties": {"role": {"const": "assistant"}},
                },
            },
        ),
    ]

    @model_validator(mode="after")
    def _has_an_assistant_turn(self) -> Conversation:
        if not any(m.role == "assistant" for m in self.messages):
            raise fail(
                "has no assistant turn: the loss is computed on assistant turns, "
                "so each example needs at least one"
            )
        return self


class TrainParams(RequestModel):
    """A training request after validation."""

    expected: ClassVar[str] = "a JSON object"

    model: Annotated[str, *MODEL_ID]
    output_model: Annotated[str, NEW_MODEL_ID]
    examples: Annotated[
        tuple[Conversation, ...],
        Rule(
            "array",
            expected="an array of {messages: [...]} objects",
            ok=bool,
            message="must contain at least one conversation",
        ),
        Rule(
            ok=lambda v: len(v) <= MAX_EXAMPLES,
            message=f"may hold at most {MAX_EXAMPLES} conversations",
        ),
        Field(json_schema_extra={"minItems": 1}),
    ]
    stream: Annotated[bool, BOOLEAN] = False
    hyperparameters: Hyperparameters = Hyperparameters()

    @model_validator(mode="after")
    def _not_too_much_text(self) -> TrainParams:
        size = sum(len(m.content) for e in self.examples for m in e.messages)
        if size > MAX_TRAINING_CHARS:
            raise fail_at(
                "examples",
                f"hold {size} characters of text; a training takes at most "
                f"{MAX_TRAINING_CHARS}",
            )
        return self


class ImportParams(RequestModel):
    """An import request: a Hugging Face checkpoint or GGUF file the server reads."""

    expected: ClassVar[str] = "a JSON object"

    path: Annotated[
        str,
        Rule(
            "string",
            ok=lambda v: v.startswith("/") and ".." not in v.split("/"),
            message="must be absolute (the server reads it), without `..`, got {value}",
            schema={
                "type": "string",
                "pattern": "^/",
                "not": {"pattern": "(^|/)\\.\\.(/|$)"},
                "description": "Absolute, on the server, without `..`",
            },
        ),
    ]
    id: Annotated[str, NEW_MODEL_ID]
    stream: Annotated[bool, BOOLEAN] = False
