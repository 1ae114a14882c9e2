"""Output that programs can rely on, as requests ask for it: a response format (a
JSON object, a JSON schema, a regular expression, a choice among strings) and the
tools a chat may call. Both protocols validate these shapes here; the grammar the
engine constrains decoding with is built from them (`engine.grammar`), and whether a
schema's every feature is supported is judged there, before any chunk.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from .fields import BOOLEAN, STRING, RequestModel, Rule, fail_at, one_of

FORMAT_TYPES = ("text", "json_object", "json_schema", "regex", "choice")
TOOL_CHOICES = ("none", "auto", "required", "function")
MAX_TOOLS = 128
MAX_CHOICE_STRINGS = 256
MAX_PATTERN_CHARS = 16_384
MAX_SCHEMA_BYTES = 256 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME = Rule(
    "string",
    ok=lambda v: NAME_PATTERN.fullmatch(v) is not None,
    message="must be 1 to 64 letters, digits, '_' or '-', got {value}",
    schema={"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
)


def _small(value: dict[str, Any]) -> bool:
    return len(json.dumps(value)) <= MAX_SCHEMA_BYTES


SCHEMA = Rule(
    "object",
    expected="a JSON Schema object",
    ok=_small,
    message=f"must be at most {MAX_SCHEMA_BYTES // 1024} KiB of JSON",
    shown=lambda v: "",
    schema={"type": "object", "description": "A JSON Schema"},
)
# A function's parameters: a JSON Schema of an object.
PARAMETERS = Rule(
    "object",
    expected="a JSON Schema object",
    ok=lambda v: _small(v) and v.get("type", "object") == "object",
    message="must be a JSON Schema of an object, at most "
    f"{MAX_SCHEMA_BYTES // 1024} KiB of JSON",
    shown=lambda v: "",
    schema={
        "type": "object",
        "properties": {"type": {"const": "object"}},
        "description": "A JSON Schema of an object",
    },
)


class JsonSchemaFormat(RequestModel):
    """OpenAI's `json_schema` response format."""

    expected: ClassVar[str] = "an object with `name` and `schema`"

    name: Annotated[str, NAME]
    # `schema` as the JSON says it (a pydantic model has a `schema` method).
    json_schema: Annotated[dict[str, Any], SCHEMA] = Field(
        default_factory=dict, alias="schema"
    )
    description: Annotated[str, STRING] | None = None
    # Accepted as OpenAI defines it; Tiger constrains every schema alike.
    strict: Annotated[bool, BOOLEAN] | None = None


class ResponseFormat(RequestModel):
    """`{"type": "text"}` (the default), `{"type": "json_object"}`, `{"type":
    "json_schema", "json_schema": {...}}`, and Tiger's own `{"type": "regex",
    "regex": "..."}` and `{"type": "choice", "choice": ["yes", "no"]}`."""

    expected: ClassVar[str] = "an object with `type`"
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": kind}}},
                    "then": {
                        "required": [kind],
                        "properties": {kind: {"not": {"type": "null"}}},
                    },
                }
                for kind in ("json_schema", "regex", "choice")
            ]
        }
    )

    type: Annotated[str, one_of(FORMAT_TYPES)]
    json_schema: JsonSchemaFormat | None = None
    regex: (
        Annotated[
            str,
            Rule(
                "string",
                ok=lambda v: 1 <= len(v) <= MAX_PATTERN_CHARS,
                message=f"must be 1 to {MAX_PATTERN_CHARS} characters",
                shown=len,
                schema={
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PATTERN_CHARS,
                },
            ),
        ]
        | None
    ) = None
    choice: (
        Annotated[
            tuple[str, ...],
            Rule(
                "strings",
                ok=lambda v: 1 <= len(v) <= MAX_CHOICE_STRINGS and all(v),
                message=f"must be 1 to {MAX_CHOICE_STRINGS} non-empty strings",
                shown=len,
                schema={
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_CHOICE_STRINGS,
                    "items": {"type": "string", "minLength": 1},
                },
            ),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _has_its_field(self) -> ResponseFormat:
        needed: dict[str, object] = {"json_schema": self.json_schema}
        needed.update(regex=self.regex, choice=self.choice)
        if self.type in needed and needed[self.type] is None:
            raise fail_at(self.type, f"is required with `type: {self.type}`")
        return self

    @property
    def constrained(self) -> bool:
        return self.type != "text"


class Tool(RequestModel):
    """A function the model may call: its name, what it does, and the JSON Schema
    of its arguments (an object)."""

    expected: ClassVar[str] = "an object with `name`"

    name: Annotated[str, NAME]
    description: Annotated[str, STRING] = ""
    parameters: Annotated[dict[str, Any], PARAMETERS] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: Annotated[bool, BOOLEAN] | None = None


class ToolCall(RequestModel):
    """A call the assistant made, as a later request sends it back."""

    expected: ClassVar[str] = "an object with `id`, `name` and `arguments`"

    id: Annotated[str, STRING]
    name: Annotated[str, NAME]
    # A JSON object, as text: the model's own calls always are; others are
    # passed on as they are.
    arguments: Annotated[str, STRING] = "{}"

    def argument_values(self) -> dict[str, Any] | str:
        """The arguments as a template reads them: an object, else the text."""
        found = _json_object(self.arguments)
        return self.arguments if found is None else found


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


TOOL_CHOICE = one_of(TOOL_CHOICES)


def check_tools(tools: tuple[Tool, ...], choice: str, function: str | None) -> None:
    """The rules between the tool fields of a request (raised at its top level)."""
    names = [t.name for t in tools]
    if len(names) > MAX_TOOLS:
        raise fail_at("tools", f"may hold at most {MAX_TOOLS} functions")
    if len(set(names)) != len(names):
        raise fail_at("tools", "name the same function twice")
    if choice in ("required", "function") and not tools:
        raise fail_at("tool_choice", f"{choice!r} needs `tools`")
    if choice == "function" and function not in names:
        raise fail_at(
            "tool_choice", f"names function {function!r}, which is not in `tools`"
        )
