"""The protobuf form of the contract, in both directions: requests <-> params, and
events <-> chunks. The servicer, the gateway and the Python client all convert
here, so a field or a stop reason is mapped once. The engine never sees protobuf.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ..pb.tiger.v1 import tiger_pb2 as pb
from .errors import InvalidArgumentError, Status
from .events import (
    MODEL_FIELDS,
    Delta,
    Failure,
    Imported,
    Info,
    Model,
    Progress,
    PromptLogprobs,
    Stop,
    StopReason,
    TokenLogprob,
    TopLogprob,
    Trained,
    Usage,
)
from .formats import ResponseFormat
from .params import (
    GenerateParams,
    GuideParams,
    Hyperparameters,
    ImportParams,
    TrainParams,
    validated,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tiger"].full_name  # tiger.v1.Tiger
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # both ways, on the server and every client
MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# The generation fields a request may leave unset (unset and zero stay apart).
GENERATION_OPTIONS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "prompt",
    "n",
    "top_logprobs",
    "frequency_penalty",
    "presence_penalty",
)
# Plain proto3 fields: their zero value (false, "") when unset.
GENERATION_PLAIN = ("logprobs", "prompt_logprobs", "cache_salt")
_HYPERPARAMETERS = tuple(Hyperparameters.model_fields)
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")


def _messages(messages: Any) -> list[pb.Message]:
    return [
        pb.Message(
            role=m.role,
            content=m.content,
            tool_calls=[
                pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments)
                for c in getattr(m, "tool_calls", ())
            ],
            tool_call_id=getattr(m, "tool_call_id", None) or "",
        )
        for m in messages
    ]


def _turns(messages: Any) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for m in messages:
        turn: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            turn["tool_call_id"] = m.tool_call_id
        turns.append(turn)
    return turns


def _format_to_pb(fmt: ResponseFormat | None) -> pb.ResponseFormat | None:
    if fmt is None:
        return None
    schema = fmt.json_schema
    return pb.ResponseFormat(
        type=fmt.type,
        json_schema=None
        if schema is None
        else pb.JsonSchema(
            name=schema.name,
            schema=json.dumps(schema.json_schema),
            description=schema.description or "",
            strict=schema.strict,
        ),
        regex=fmt.regex or "",
        choice=list(fmt.choice or ()),
    )


def _format_from_pb(request: pb.GenerateRequest) -> dict[str, Any]:
    """The request's format as JSON would give it ({} when unset). Schema text
    that is no JSON is refused as the gateway refuses a body."""
    if not request.HasField("response_format"):
        return {}
    fmt = request.response_format
    value: dict[str, Any] = {"type": fmt.type or "text"}
    if fmt.HasField("json_schema"):
        schema = fmt.json_schema
        value["json_schema"] = {
            "name": schema.name,
            "schema": _json_text(schema.schema, "response_format.json_schema.schema"),
            "description": schema.description or None,
            **({"strict": schema.strict} if schema.HasField("strict") else {}),
        }
    if fmt.regex:
        value["regex"] = fmt.regex
    if fmt.choice:
        value["choice"] = list(fmt.choice)
    return {"response_format": value}


def _tools_from_pb(request: pb.GenerateRequest) -> dict[str, Any]:
    if not (request.tools or request.tool_choice):
        return {}
    fields: dict[str, Any] = {
        "tools": [
            {
                "name": t.name,
                "description": t.description,
                "parameters": _json_text(t.parameters, f"tools[{i}].parameters")
                if t.parameters
                else None,
                **({"strict": t.strict} if t.HasField("strict") else {}),
            }
            for i, t in enumerate(request.tools)
        ],
        "tool_choice": request.tool_choice or "auto",
        "tool_function": request.tool_function or None,
    }
    if request.HasField("parallel_tool_calls"):
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def _tools_to_pb(params: GuideParams | GenerateParams) -> dict[str, Any]:
    if not isinstance(params, GenerateParams) or not params.tools:
        return {}
    return {
        "tools": [
            pb.Tool(
                name=t.name,
                description=t.description,
                parameters=json.dumps(t.parameters),
                strict=t.strict,
            )
            for t in params.tools
        ],
        "tool_choice": params.tool_choice,
        "tool_function": params.tool_function or "",
        "parallel_tool_calls": params.parallel_tool_calls,
    }


STRUCTURE_FIELDS = (
    "response_format",
    "tools",
    "tool_choice",
    "tool_function",
    "parallel_tool_calls",
)


def structure_to_pb(fields: dict[str, Any]) -> dict[str, Any]:
    """A client's response format and tool fields (JSON shapes, as the HTTP API
    takes them) as request fields, checked as the server checks them."""
    given = {k: v for k in STRUCTURE_FIELDS if (v := fields.get(k)) is not None}
    if not given:
        return {}
    chat = [{"role": "user", "content": "-"}]
    params = validated(GenerateParams, {"model": "m", "messages": chat, **given})
    return {
        "response_format": _format_to_pb(params.response_format),
        **_tools_to_pb(params),
    }


def _json_text(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidArgumentError(f"`{field}` must be JSON text") from None


def _set_fields(message: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The optional fields a message has set (unset and zero stay apart)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def params_to_pb(params: GuideParams | GenerateParams) -> pb.GenerateRequest:
    """The request of params (the guide's fields, or all of them)."""
    return pb.GenerateRequest(
        model=params.model,
        messages=_messages(params.messages),
        stop_sequences=list(params.stop_sequences),
        response_format=_format_to_pb(params.response_format),
        **_tools_to_pb(params),
        **{
            name: value
            for name in (*GENERATION_OPTIONS, *GENERATION_PLAIN)
            if (value := getattr(params, name, None)) is not None
        },
    )


def params_from_pb(request: pb.GenerateRequest) -> GenerateParams:
    """Validated params; raises `InvalidArgumentError` as the gateway would."""
    return validated(
        GenerateParams,
        {
            "model": request.model,
            **({"messages": _turns(request.messages)} if request.messages else {}),
            "stream": True,
            "stop_sequences": list(request.stop_sequences),
            **{name: getattr(request, name) for name in GENERATION_PLAIN},
            **_set_fields(request, GENERATION_OPTIONS),
            **_format_from_pb(request),
            **_tools_from_pb(request),
        },
    )


def train_params_to_pb(params: TrainParams) -> pb.TrainRequest:
    hyper = {k: v for k, v in params.hyperparameters if v is not None}
    return pb.TrainRequest(
        model=params.model,
        output_model=params.output_model,
        examples=[
            pb.Conversation(messages=_messages(e.messages)) for e in params.examples
        ],
        hyperparameters=pb.Hyperparameters(**hyper),
    )


def train_params_from_pb(request: pb.TrainRequest) -> TrainParams:
    """Validated training params; raises `InvalidArgumentError`."""
    return validated(
        TrainParams,
        {
            "model": request.model,
            "output_model": request.output_model,
            "examples": [{"messages": _turns(e.messages)} for e in request.examples],
            "stream": True,
            "hyperparameters": _set_fields(request.hyperparameters, _HYPERPARAMETERS),
        },
    )


def import_params_to_pb(params: ImportParams) -> pb.ImportModelRequest:
    return pb.ImportModelRequest(path=params.path, id=params.id)


def import_params_from_pb(request: pb.ImportModelRequest) -> ImportParams:
    return validated(
        ImportParams, {"path": request.path, "id": request.id, "stream": True}
    )


def stop_reason_to_pb(reason: StopReason) -> Any:
    return pb.StopReason.Value(f"STOP_REASON_{reason.name}")


def stop_reason_from_pb(value: int) -> StopReason | None:
    """The stop reason, or None for one this side does not know (UNSPECIFIED)."""
    name = pb.StopReason.Name(value).removeprefix("STOP_REASON_")
    return StopReason.__members__.get(name)


def event_to_pb(event: Any, chunk: type = pb.GenerateChunk) -> Any:
    """An event as a chunk of type `chunk` (Generate, Train or Import)."""
    match event:
        case Info(message):
            return chunk(info=pb.InfoChunk(message=message))
        case Failure(message, status):
            code = 0 if status is Status.INTERNAL else status.value[0]
            return chunk(error=pb.ErrorChunk(message=message, code=code))
        case Delta(text, index, logprobs):
            tokens = [_logprob_to_pb(t) for t in logprobs]
            return chunk(delta=pb.DeltaChunk(delta=text, index=index, logprobs=tokens))
        case Stop(reason, usage, index):
            stop = pb.StopChunk(
                stop_reason=stop_reason_to_pb(reason),
                usage=pb.Usage(**asdict(usage)),
                index=index,
            )
            return chunk(stop=stop)
        case PromptLogprobs(tokens):
            prompt = pb.PromptChunk(tokens=[_logprob_to_pb(t) for t in tokens])
            return chunk(prompt=prompt)
        case Progress():
            return chunk(progress=pb.ProgressChunk(**asdict(event)))
        case Trained(model, duration_ms, train_tokens, steps):
            usage = pb.TrainUsage(
                duration_ms=duration_ms, train_tokens=train_tokens, steps=steps
            )
            return chunk(
                stop=pb.TrainStopChunk(
                    stop_reason="completed", model=model, usage=usage
                )
            )
        case Imported(model, duration_ms):
            return chunk(stop=pb.ImportStopChunk(model=model, duration_ms=duration_ms))
    raise TypeError(f"not an event: {event!r}")


def event_from_pb(chunk: Any) -> Any:
    """The event of a Generate, Train or Import chunk; an error chunk (or an empty
    one) is a `Failure`."""
    kind = chunk.WhichOneof("chunk")
    if kind == "info":
        return Info(chunk.info.message)
    if kind == "delta":
        d = chunk.delta
        return Delta(d.delta, d.index, tuple(_logprob_from_pb(t) for t in d.logprobs))
    if kind == "prompt":
        return PromptLogprobs(tuple(_logprob_from_pb(t) for t in chunk.prompt.tokens))
    if kind == "progress":
        p = chunk.progress
        return Progress(**{name: getattr(p, name) for name in Progress.__annotations__})
    if kind == "stop":
        return _stop_from_pb(chunk.stop)
    if kind == "error":
        code = chunk.error.code
        status = next((s for s in Status if s.value[0] == code), Status.INTERNAL)
        return Failure(chunk.error.message, Status.INTERNAL if code == 0 else status)
    return Failure("the backend sent an empty chunk")


def _stop_from_pb(stop: Any) -> Stop | Trained | Imported | Failure:
    if isinstance(stop, pb.StopChunk):
        reason = stop_reason_from_pb(stop.stop_reason)
        if reason is None:
            return Failure("the backend sent a stop chunk without a stop reason")
        u = stop.usage
        usage = Usage(u.duration_ms, u.input_tokens, u.output_tokens, u.cached_tokens)
        return Stop(reason, usage, stop.index)
    if isinstance(stop, pb.TrainStopChunk):
        u = stop.usage
        return Trained(stop.model, u.duration_ms, u.train_tokens, u.steps)
    return Imported(stop.model, stop.duration_ms)


def _logprob_to_pb(t: TokenLogprob) -> pb.TokenLogprob:
    top = [pb.TopLogprob(**asdict(alternative)) for alternative in t.top]
    message = pb.TokenLogprob(
        token_id=t.token_id, token=t.token, bytes=t.bytes, top=top
    )
    if t.logprob is not None:
        message.logprob = t.logprob
    return message


def _logprob_from_pb(t: pb.TokenLogprob) -> TokenLogprob:
    top = tuple(TopLogprob(a.token_id, a.token, a.bytes, a.logprob) for a in t.top)
    logprob = t.logprob if t.HasField("logprob") else None
    return TokenLogprob(t.token_id, t.token, t.bytes, logprob, top)


def model_to_pb(model: Model) -> pb.ModelInfo:
    return pb.ModelInfo(
        **{name: getattr(model, name) for name in MODEL_FIELDS},
        sampling=pb.SamplingDefaults(**model.sampling),
    )


def model_from_pb(info: pb.ModelInfo) -> Model:
    return Model(
        **{name: getattr(info, name) for name in MODEL_FIELDS},
        sampling=_set_fields(info.sampling, SAMPLING_FIELDS),
    )
