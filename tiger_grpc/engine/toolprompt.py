"""A chat with tools, as the model's template reads it.

A template that knows tools (it uses `tools`: Qwen's, Llama 3.1's, Hermes') gets
them, and the turns in transformers' shape (an assistant's `tool_calls`, `tool`
messages). Any other (the embedded SmolLM2's plain ChatML) gets Tiger's documented
prompt: the tools described in the system message, earlier calls written back as
the `<tool_call>` blocks the model is asked for, and tool results as a user turn
of `<tool_response>` blocks (Hermes' format, which Qwen's template also writes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..api.formats import Tool
from ..api.params import Turn
from ..api.toolcalls import call_text

TOOLS_PROMPT = """You can call functions to answer. They are given as JSON schemas \
within <tools></tools>:
<tools>
{tools}
</tools>
To call functions, answer with one <tool_call></tool_call> block per call, each \
holding a JSON object with the function's name and arguments:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-json-object>}}
</tool_call>
A function's result comes back to you within <tool_response></tool_response>."""


def knows_tools(tokenizer: Any) -> bool:
    """The model's chat template renders tools itself."""
    source = getattr(tokenizer, "chat_template_source", None)
    if source is None:
        source = getattr(tokenizer, "chat_template", None)
    return isinstance(source, str) and "tools" in source


def tool_schema(tool: Tool) -> dict[str, Any]:
    """OpenAI's (and transformers') form of a function."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def template_turns(
    messages: Sequence[Turn], tools: Sequence[Tool], native: bool
) -> list[dict[str, Any]]:
    """The turns a template gets: transformers' shape when it knows tools
    (`native`), else plain roles and text."""
    if native:
        return [_native_turn(m) for m in messages]
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            response = f"<tool_response>\n{m.content}\n</tool_response>"
            if turns and turns[-1].get("tool_results"):
                turns[-1]["content"] += "\n" + response
            else:
                turns.append({"role": "user", "content": response, "tool_results": 1})
            continue
        content = m.content
        if m.tool_calls:
            calls = "\n".join(call_text(c.name, c.arguments) for c in m.tool_calls)
            content = f"{content}\n{calls}" if content else calls
        turns.append({"role": m.role, "content": content})
    for turn in turns:
        turn.pop("tool_results", None)
    if tools:
        described = "\n".join(json.dumps(tool_schema(t)) for t in tools)
        offer = TOOLS_PROMPT.format(tools=described)
        if turns and turns[0]["role"] == "system":
            turns[0] = {**turns[0], "content": f"{turns[0]['content']}\n\n{offer}"}
        else:
            turns.insert(0, {"role": "system", "content": offer})
    return turns


def _native_turn(m: Turn) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        turn["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.argument_values()},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        turn["tool_call_id"] = m.tool_call_id
    return turn
