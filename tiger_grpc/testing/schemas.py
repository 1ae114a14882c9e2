"""JSON schemas as services write them, generated (hypothesis): objects nested in
objects and arrays, arrays with bounds, enums, integers with ranges, optional and
required fields, `anyOf`. The property-based test of constrained decoding and
`make bench` draw from the same strategy (`sample`)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORDS = st.text("abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=8)
LEAVES = st.one_of(
    st.just({"type": "string", "maxLength": 24}),
    st.builds(
        lambda low, span: {"type": "string", "minLength": low, "maxLength": low + span},
        st.integers(0, 3),
        st.integers(0, 12),
    ),
    st.builds(
        lambda low, span: {"type": "integer", "minimum": low, "maximum": low + span},
        st.integers(-1000, 1000),
        st.integers(0, 1000),
    ),
    st.sampled_from([{"type": "number"}, {"type": "boolean"}, {"type": "null"}]),
    st.lists(WORDS, min_size=1, max_size=5, unique=True).map(lambda v: {"enum": v}),
)


def _objects(children: st.SearchStrategy) -> st.SearchStrategy:
    names = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
    return st.dictionaries(names, children, min_size=1, max_size=4).flatmap(
        lambda properties: st.sets(st.sampled_from(sorted(properties))).map(
            lambda required: {
                "type": "object",
                "properties": properties,
                "required": sorted(required),
                "additionalProperties": False,
            }
        )
    )


def _compound(children: st.SearchStrategy) -> st.SearchStrategy:
    arrays = st.builds(
        lambda items, low, span: {
            "type": "array",
            "items": items,
            "minItems": low,
            "maxItems": low + span,
        },
        children,
        st.integers(0, 2),
        st.integers(0, 3),
    )
    any_of = st.lists(children, min_size=2, max_size=3).map(lambda v: {"anyOf": v})
    return st.one_of(arrays, _objects(children), any_of)


SCHEMAS = _objects(st.recursive(LEAVES, _compound, max_leaves=6))


def sample(count: int) -> list[dict[str, Any]]:
    """`count` schemas, the same on every run."""
    found: list[dict[str, Any]] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(SCHEMAS)
    def collect(schema: dict[str, Any]) -> None:
        found.append(schema)

    collect()
    return found[:count]
