"""OpenAI's API on the gateway, beside the guide's: the same port, keys and gRPC
calls, in OpenAI's shapes. `protocol` declares the requests, `chat` and
`completions` the routes, `shapes` the response objects, `serve` the JSON or
Server-Sent Events answer, `calls` the gRPC calls behind it, `errors` the error
objects, `models` one model by id. `GET /v1/models` answers in both shapes
(`native.list_models`)."""

from __future__ import annotations

from aiohttp import web

from .chat import chat_completions
from .completions import completions
from .errors import error_object
from .models import retrieve_model

PATHS = ("/v1/chat/completions", "/v1/completions")
__all__ = ["PATHS", "add_routes", "error_object"]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models/{model}", retrieve_model)
