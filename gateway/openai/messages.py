"""OpenAI's chat messages and tools, as requests send them: text or text-part
content, an assistant's `tool_calls`, `tool` messages, function tools, and the
named `tool_choice`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, model_validator

from tiger_grpc.api.fields import Rule, one_of
from tiger_grpc.api.formats import NAME, PARAMETERS, Tool
from tiger_grpc.api.params import STRING, RequestModel, fail_at

ROLES = {"system": "system", "developer": "system", "user": "user"}
ROLES |= {"assistant": "assistant", "tool": "tool"}


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
FUNCTION = one_of(("function",))


class CalledFunction(RequestModel):
    expected: ClassVar[str] = "an object with `name` and `arguments`"

    name: Annotated[str, NAME]
    arguments: Annotated[str, STRING] = "{}"


class OpenAIToolCall(RequestModel):
    expected: ClassVar[str] = "an object with `id` and `function`"

    id: Annotated[str, STRING]
    type: Annotated[str, FUNCTION] = "function"
    function: CalledFunction


class OpenAIMessage(RequestModel):
    expected: ClassVar[str] = "an object with `role` and `content`"
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"role": {"const": "tool"}}},
                    "then": {
                        "required": ["tool_call_id"],
                        "properties": {
                            "tool_call_id": {"type": "string", "minLength": 1}
                        },
                    },
                },
                {
                    "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
                    "then": {
                        "required": ["content"],
                        "properties": {
                            "tool_calls": {"maxItems": 0},
                            "content": {"not": {"type": "null"}},
                        },
                    },
                },
                {
                    "if": {
                        "properties": {"tool_calls": {"maxItems": 0}},
                    },
                    "then": {
                        "required": ["content"],
                        "properties": {"content": {"not": {"type": "null"}}},
                    },
                },
            ]
        }
    )

    role: Annotated[
        str,
        Rule(
            "string",
            ok=lambda v: v in ROLES,
            message=f"must be one of {', '.join(ROLES)}, got {{value}}",
            schema={"type": "string", "enum": list(ROLES)},
        ),
    ]
    # Null (or absent) only for an assistant message with `tool_calls`.
    content: Annotated[str, CONTENT] = ""
    tool_calls: tuple[OpenAIToolCall, ...] = ()
    tool_call_id: Annotated[str, STRING] | None = None
    name: Annotated[str, STRING] | None = None  # accepted, not used

    @model_validator(mode="before")
    @classmethod
    def _content_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("content") is not None:
            data = {**data, "content": _text_of(data["content"])}
        return data

    def turn(self) -> dict[str, Any]:
        """The message as Tiger's `Turn` (content absent: absent)."""
        given = "content" in self.model_fields_set
        return {
            "role": ROLES[self.role],
            **({"content": self.content} if given else {}),
            "tool_calls": [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in self.tool_calls
            ],
            "tool_call_id": self.tool_call_id,
        }


class FunctionSpec(Tool):
    # OpenAI's function may leave `parameters` out (Tiger's tool then takes none)
    parameters: Annotated[dict[str, Any], PARAMETERS] | None = None  # type: ignore[assignment]


class OpenAITool(RequestModel):
    expected: ClassVar[str] = "an object with `type: function` and `function`"

    type: Annotated[str, FUNCTION]
    function: FunctionSpec


def named_choice(data: dict[str, Any]) -> dict[str, Any]:
    """`tool_choice: {type: function, function: {name}}` as Tiger's fields."""
    choice = data.get("tool_choice")
    if not isinstance(choice, dict):
        return data
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise fail_at(
            "tool_choice",
            "must be none, auto, required or {type: function, function: {name}}",
        )
    return {**data, "tool_choice": "function", "tool_function": name}
