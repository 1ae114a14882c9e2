"""How a chat with tools reaches the model: the embedded model's plain ChatML gets
Tiger's documented prompt; a template that knows tools renders them itself, the
same as transformers renders it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tiger_grpc.api.params import GenerateParams, validated
from tiger_grpc.engine.chat import ChatTokenizer
from tiger_grpc.engine.request import prompt_ids

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
]
# A template in the style of Qwen's and Hermes': it lists `tools` and writes an
# assistant's `tool_calls` itself.
KNOWS_TOOLS = """{%- if tools %}<|im_start|>system
{{ messages[0]['content'] }}
# Tools
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{%- endif %}
{%- for message in messages[1:] %}
<|im_start|>{{ message.role }}
{%- if message.tool_calls %}
{%- for call in message.tool_calls %}
<tool_call>{"name": "{{ call.function.name }}", "arguments": \
{{ call.function.arguments | tojson }}}</tool_call>
{%- endfor %}
{%- else %}
{{ message.content }}
{%- endif %}<|im_end|>
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


def params(**fields) -> GenerateParams:
    return validated(
        GenerateParams, {"model": "m", "messages": TURNS, "tools": [WEATHER], **fields}
    )


def test_the_embedded_template_gets_tigers_prompt(default_model_dir: Path) -> None:
    ours = ChatTokenizer(default_model_dir / "hf")
    text = ours.decode(prompt_ids(ours, params()))
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions")
    assert '"name": "get_weather"' in system and "<tool_call>" in system
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|>'
    ) in text
    assert (
        '<|im_start|>user\n<tool_response>\n{"celsius": 18}\n</tool_response>'
        "<|im_end|>\n<|im_start|>assistant\n"
    ) in text
    unoffered = ours.decode(prompt_ids(ours, params(tool_choice="none")))
    assert "You can call functions" not in unoffered and "<tool_call>" in unoffered


def test_a_template_that_knows_tools_renders_them_as_transformers_does(
    default_model_dir: Path, tmp_path: Path
) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_dir / "hf" / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text(KNOWS_TOOLS)
    ours = ChatTokenizer(tmp_path)
    text = ours.decode(prompt_ids(ours, params()))
    assert "You can call functions" not in text  # the template's own words
    assert '{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}' in text

    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    turns = [
        {"role": "system", "content": "Be brief."},
        TURNS[1],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
    ]
    tools = [{"type": "function", "function": WEATHER}]
    expected = theirs.apply_chat_template(
        turns, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert text == expected
