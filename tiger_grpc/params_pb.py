"""Request messages <-> validated params, for both the server and the gateway.

Imports nothing of the engine, so the gateway can use it.
"""

from __future__ import annotations

from .pb.tiger.v1 import tiger_pb2 as pb
from .validation import (
    ChatMessage,
    GenerateParams,
    TrainParams,
    check_generate_params,
    check_train_params,
)


def params_from_pb(request: pb.GenerateRequest) -> GenerateParams:
    """Validated params from a request; raises `InvalidArgument`."""
    params = GenerateParams(
        model=request.model,
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        stream=True,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else 1.0,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        top_k=request.top_k if request.HasField("top_k") else 0,
        stop_sequences=tuple(request.stop_sequences),
        seed=request.seed if request.HasField("seed") else None,
    )
    check_generate_params(params)
    return params


def params_to_pb(params: GenerateParams) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        model=params.model,
        messages=[pb.Message(role=m.role, content=m.content) for m in params.messages],
        top_k=params.top_k,
        temperature=params.temperature,
        top_p=params.top_p,
        stop_sequences=list(params.stop_sequences),
    )
    if params.max_tokens is not None:
        request.max_tokens = params.max_tokens
    if params.seed is not None:
        request.seed = params.seed
    return request


def train_params_from_pb(request: pb.TrainRequest) -> TrainParams:
    """Validated training params from a request; raises `InvalidArgument`."""
    h = request.hyperparameters
    kwargs = {
        name: getattr(h, name)
        for name in (
            "method",
            "epochs",
            "max_steps",
            "learning_rate",
            "batch_size",
            "lora_rank",
            "seed",
        )
        if h.HasField(name)
    }
    params = TrainParams(
        model=request.model,
        output_model=request.output_model,
        examples=tuple(
            tuple(ChatMessage(m.role, m.content) for m in example.messages)
            for example in request.examples
        ),
        stream=True,
        **kwargs,
    )
    check_train_params(params)
    return params


def train_params_to_pb(params: TrainParams) -> pb.TrainRequest:
    h = pb.Hyperparameters(
        method=params.method,
        epochs=params.epochs,
        batch_size=params.batch_size,
        lora_rank=params.lora_rank,
        seed=params.seed,
    )
    if params.max_steps is not None:
        h.max_steps = params.max_steps
    if params.learning_rate is not None:
        h.learning_rate = params.learning_rate
    return pb.TrainRequest(
        model=params.model,
        output_model=params.output_model,
        examples=[
            pb.Conversation(
                messages=[pb.Message(role=m.role, content=m.content) for m in example]
            )
            for example in params.examples
        ],
        hyperparameters=h,
    )
