"""Field rules for request models: the JSON type check, the value check, the error
message and the JSON schema, as one piece of `Annotated` metadata.

JSON types are strict: `"stream": "yes"` is not coerced. An integer is one as JSON
Schema (and so the OpenAPI document) defines it: `5` or `5.0`, never `5.5`, `"5"` or
`true`. A number is judged as the gRPC request carries it, a 32-bit float, so both
protocols decide alike (1e-308 is 0.0 on the wire). A failed rule's message follows
the field's name: "`top_p` must be a number in (0, 1], got 2.0".

    max_tokens: Annotated[int, integer(1, 1_000_000, "from 1 to 1000000")] | None
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from .errors import InvalidArgumentError


def fail(message: str, **context: Any) -> PydanticCustomError:
    """An error whose text follows the field's name: "`top_p` <message>"."""
    return PydanticCustomError("tiger", message, context)


def type_name(value: Any) -> str:
    """The JSON name of a value's type, as error messages give it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_int(value):
        return "integer"
    for cls, name in ((float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, cls):
            return name
    return "object" if isinstance(value, dict) else type(value).__name__


def _is_int(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def as_float32(value: float) -> float:
    """The value as a gRPC request carries it (a 32-bit float)."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


# A JSON kind: (is the value one, what to call it, the Python value it becomes).
KINDS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "boolean": (lambda v: isinstance(v, bool), "a boolean", lambda v: v),
    "string": (lambda v: isinstance(v, str), "a string", lambda v: v),
    "integer": (_is_int, "an integer", lambda v: int(v)),
    "number": (
        lambda v: _is_int(v) or isinstance(v, float),
        "a number",
        lambda v: as_float32(float(v)),
    ),
    "array": (lambda v: isinstance(v, list | tuple), "an array", lambda v: v),
    "object": (lambda v: isinstance(v, dict), "an object", lambda v: v),
    "strings": (
        lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
        "an array of strings",
        lambda v: v,
    ),
    "string or strings": (  # one string is an array of one
        lambda v: isinstance(v, str)
        or (isinstance(v, list | tuple) and all(isinstance(s, str) for s in v)),
        "a string or an array of strings",
        lambda v: [v] if isinstance(v, str) else v,
    ),
}


@dataclass(frozen=True, eq=False)  # hashed by identity, as Annotated needs
class Rule:
    """A field's rule: its JSON `kind` (checked before anything else, `expected`
    naming it in the message), then `ok(value)` or `message` (where `{value}` is
    `shown(value)`), and the JSON `schema` the OpenAPI document gives (pydantic's
    own when None)."""

    kind: str | None = None
    expected: str | None = None
    ok: Callable[[Any], bool] | None = None
    message: str = ""
    shown: Callable[[Any], Any] = repr
    schema: dict[str, Any] | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if self.ok is not None:
            schema = core_schema.no_info_after_validator_function(self._check, schema)
        if self.kind is not None:
            schema = core_schema.no_info_before_validator_function(self._kind, schema)
        return schema

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return dict(self.schema) if self.schema is not None else handler(schema)

    def _kind(self, value: Any) -> Any:
        assert self.kind is not None
        check, default, convert = KINDS[self.kind]
        if not check(value):
            raise fail(
                "must be {expected}, got {got}",
                expected=self.expected or default,
                got=type_name(value),
            )
        return convert(value)

    def _check(self, value: Any) -> Any:
        assert self.ok is not None
        if not self.ok(value):
            raise fail(self.message.replace("{value}", "{got}"), got=self.shown(value))
        return value


BOOLEAN = Rule("boolean")
STRING = Rule("string")


def integer(low: int, high: int, rule: str) -> Rule:
    """An integer from `low` to `high`; `rule` says so in words."""
    return Rule(
        "integer",
        ok=lambda v: low <= v <= high,
        message=f"must be an integer {rule}, got {{value}}",
        shown=str,
        schema={"type": "integer", "minimum": low, "maximum": high},
    )


def number(ok: Callable[[float], bool], rule: str, low: float, high: float) -> Rule:
    """A finite number that passes `ok`; `low` and `high` bound it in the schema."""
    return Rule(
        "number",
        ok=lambda v: math.isfinite(v) and ok(v),
        message=f"must be {rule}, got {{value}}",
        shown=str,
        schema={"type": "number", "minimum": low, "maximum": high},
    )


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(
        "string",
        ok=lambda v: v in choices,
        message=f"must be one of {', '.join(choices)}, got {{value}}",
        schema={"type": "string", "enum": list(choices)},
    )


class RequestModel(BaseModel):
    """A request body's model: frozen, unknown fields ignored, and `null` the same
    as absent (for fields that have a default). `expected` names what the body
    must be in a message ("must be a JSON object, got array")."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    expected: ClassVar[str] = "an object"

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, dict):
            raise fail(
                "must be {expected}, got {got}",
                expected=cls.expected,
                got=type_name(data),
            )
        # `null` is absent for a field with a default; a required one says what
        # it must be ("`model` must be a string, got null").
        required = {n for n, field in cls.model_fields.items() if field.is_required()}
        return {k: v for k, v in data.items() if v is not None or k in required}


P = TypeVar("P", bound=RequestModel)


def validated(cls: type[P], data: Any) -> P:
    """`cls` built from `data` (a decoded JSON body, or fields from protobuf);
    raises `InvalidArgumentError` naming the first field that is wrong."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgumentError(_message(exc.errors()[0])) from None


def fail_at(field: str, message: str) -> PydanticCustomError:
    """A model-level error that names one field: "`field` <message>"."""
    return PydanticCustomError("tiger_at", message, {"at": field})


def _message(error: Any) -> str:
    path = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
    ).lstrip(".")
    if error["type"] == "missing":
        return f"`{path}` is required"
    if error["type"] == "tiger_at":  # a model's rule about one of its fields
        path = ".".join(p for p in (path, error["ctx"]["at"]) if p)
    if not path:
        return f"the request body {error['msg']}"
    return f"`{path}` {error['msg']}"
