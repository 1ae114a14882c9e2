"""GET /v1/models/{model}: one model in OpenAI's shape (`client.models.retrieve`),
or OpenAI's 404 naming it. The list itself is `native.list_models`."""

from __future__ import annotations

import grpc
from aiohttp import web

from tiger_grpc.api.errors import Status
from tiger_grpc.api.wire import model_from_pb

from ..auth import Reject
from ..chunks import model_to_json
from ..native import models_reply, openai_model
from .errors import error_response, rpc_error_response


async def retrieve_model(request: web.Request) -> web.Response:
    """One model by id (case-insensitive, as everywhere)."""
    wanted = request.match_info["model"].strip().lower()
    try:
        reply = await models_reply(request)
    except Reject as reject:
        return error_response(reject.status, reject.message)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc)
    for model in reply.models:
        if model.id == wanted:
            return web.json_response(openai_model(model_to_json(model_from_pb(model))))
    known = ", ".join(m.id for m in reply.models)
    message = f"`model` {wanted!r} does not exist; served: {known}"
    return error_response(Status.NOT_FOUND, message)
