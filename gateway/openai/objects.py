"""OpenAI's response objects as typed models: what the routes build and send
(`dump`), and the schemas of the OpenAPI document. Their fields are named and
shaped as OpenAI's API reference and the official SDKs' types have them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Finish = Literal["stop", "length", "tool_calls"]


class _Object(BaseModel):
    def model_post_init(self, context: Any) -> None:
        # Constants (`object`, `role`) are always sent; only optional fields
        # (default None) are left out when unset.
        for name, field in type(self).model_fields.items():
            if field.default is not None and not field.is_required():
                self.model_fields_set.add(name)

    def dump(self) -> dict[str, Any]:
        """The JSON object: optional fields left unset are left out (a chunk's
        delta holds only what it carries), fields set to None are null."""
        return self.model_dump(exclude_unset=True)


class TopLogprob(_Object):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(_Object):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Object):
    content: list[TokenLogprob]


class PromptTokensDetails(_Object):
    cached_tokens: int  # prompt tokens the prefix cache held (not computed again)


class CompletionUsage(_Object):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCall(_Object):
    name: str
    arguments: str  # a JSON object, as text


class ToolCall(_Object):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Object):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the answer is tool calls only
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Object):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Finish | None


class ChatCompletion(_Object):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class FunctionDelta(_Object):
    name: str | None = None  # on a call's first chunk
    arguments: str | None = None  # fragments, to be joined


class ToolCallDelta(_Object):
    index: int
    id: str | None = None  # on a call's first chunk, with `type` and the name
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class ChunkDelta(_Object):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Object):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: Finish | None


class ChatCompletionChunk(_Object):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None  # with include_usage: null but on the last


class CompletionLogprobs(_Object):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the first prompt token
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Object):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Finish | None


class TextCompletion(_Object):
    """A `text_completion`, whole or (streaming) one of its chunks."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None  # with include_usage: null but on the last


class ErrorDetail(_Object):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(_Object):
    error: ErrorDetail


RESPONSES = {
    "ChatCompletion": ChatCompletion,
    "ChatCompletionChunk": ChatCompletionChunk,
    "TextCompletion": TextCompletion,
    "OpenAIError": ErrorBody,
}
