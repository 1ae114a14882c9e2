"""The gateway's OpenAPI 3 description, served at GET /openapi.json.

Kept true by tests/test_openapi.py, which runs schemathesis against the live gateway.
"""

from __future__ import annotations

from typing import Any

from tiger_grpc import __version__
from tiger_grpc.validation import (
    MAX_MODEL_ID_CHARS,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    ROLES,
    TRAIN_LIMITS,
)

ERROR = {"$ref": "#/components/schemas/Error"}
# Numbers travel to the server as 32-bit floats: below this, a positive number is 0.
FLOAT32_TINY = 1e-45


def _errors(*codes: int) -> dict[str, Any]:
    why = {
        400: "Bad JSON, wrong field type or range, prompt too long",
        401: "Missing or wrong bearer token",
        404: "Unknown model or route",
        405: "Wrong method",
        409: "`output_model` exists",
        413: "Body over the limit",
        429: "At capacity (see Retry-After)",
        500: "Failed after it started (non-streaming)",
        503: "Backend unreachable or not ready",
    }
    return {
        str(c): {
            "description": why[c],
            "content": {"application/json": {"schema": ERROR}},
        }
        for c in codes
    }


def _int(low: float, high: float) -> dict[str, Any]:
    return {"type": "integer", "minimum": int(low), "maximum": int(high)}


MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": list(ROLES)},
        "content": {"type": "string"},
    },
}
MESSAGES = {"type": "array", "minItems": 1, "items": MESSAGE}
MODEL_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_MODEL_ID_CHARS,
    "pattern": r"\S",
    "description": "Model id, case-insensitive",
}
NDJSON = {
    "application/x-ndjson": {
        "schema": {
            "type": "string",
            "description": "One JSON chunk per line; the last is `stop` or `error`.",
        }
    }
}


def openapi() -> dict[str, Any]:
    generate_request = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": MODEL_ID,
            "messages": MESSAGES,
            "stream": {"type": "boolean", "default": False},
            "max_tokens": _int(1, MAX_TOKENS_LIMIT),
            "temperature": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_TEMPERATURE,
                "default": 1.0,
            },
            "top_p": {
                "type": "number",
                "minimum": FLOAT32_TINY,
                "maximum": 1,
                "default": 1.0,
            },
            "top_k": {
                "type": "integer",
                "minimum": 0,
                "maximum": 2**31 - 1,
                "default": 0,
            },
            "stop_sequences": {
                "type": "array",
                "maxItems": MAX_STOP_SEQUENCES,
                "items": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_STOP_SEQUENCE_CHARS,
                },
            },
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
        },
    }
    train_request = {
        "type": "object",
        "required": ["model", "output_model", "examples"],
        "properties": {
            "model": MODEL_ID,
            "output_model": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            },
            "examples": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "messages": {
                            **MESSAGES,
                            "description": "The loss covers the assistant turns",
                            "contains": {
                                "type": "object",
                                "properties": {"role": {"const": "assistant"}},
                            },
                        }
                    },
                },
            },
            "stream": {"type": "boolean", "default": False},
            "hyperparameters": {
                "type": "object",
                "properties": {
                    "method": {"type": "string", "enum": ["lora", "full"]},
                    **{name: _int(*limits) for name, limits in TRAIN_LIMITS.items()},
                    "learning_rate": {
                        "type": "number",
                        "minimum": FLOAT32_TINY,
                        "maximum": 1,
                    },
                    "seed": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
                },
            },
        },
    }
    usage = {
        "type": "object",
        "required": ["duration_ms", "input_tokens", "output_tokens"],
        "properties": {
            k: {"type": "integer"}
            for k in ("duration_ms", "input_tokens", "output_tokens")
        },
    }
    message = {
        "type": "object",
        "required": ["type", "model", "content", "stop_reason", "usage"],
        "properties": {
            "type": {"const": "message"},
            "model": {"type": "string"},
            "content": {"type": "string"},
            "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence"]},
            "usage": usage,
        },
    }
    trained = {
        "type": "object",
        "required": ["type", "stop_reason", "model", "usage"],
        "properties": {
            "type": {"const": "stop"},
            "stop_reason": {"const": "completed"},
            "model": {"type": "string"},
            "usage": {"type": "object"},
        },
    }
    model = {
        "type": "object",
        "required": ["id", "loaded", "provider", "context_length"],
        "properties": {
            "id": {"type": "string"},
            "loaded": {"type": "boolean"},
            "provider": {"type": "string"},
            "context_length": {"type": "integer"},
            "source": {"type": "string"},
            "running": {"type": "integer"},
            "tokens_generated": {"type": "integer"},
        },
    }
    status = {
        "application/json": {
            "schema": {"type": "object", "properties": {"status": {"type": "string"}}}
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tiger HTTP API",
            "version": __version__,
            "description": "Text generation and fine-tuning. Streaming responses are "
            "NDJSON: `info`, `delta` (or `progress`), then one `stop` or "
            "one `error` chunk.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {
                        "type": {"type": "string", "enum": ["error"]},
                        "message": {"type": "string"},
                    },
                }
            },
        },
        "paths": {
            "/v1/generate_response": {
                "post": {
                    "summary": "Generate a reply",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": generate_request}},
                    },
                    "responses": {
                        "200": {
                            "description": "One message, or NDJSON chunks",
                            "content": {
                                "application/json": {"schema": message},
                                **NDJSON,
                            },
                        },
                        **_errors(400, 401, 404, 413, 429, 500, 503),
                    },
                }
            },
            "/v1/train": {
                "post": {
                    "summary": "Fine-tune a model and register it under a new id",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": train_request}},
                    },
                    "responses": {
                        "200": {
                            "description": "The final object, or NDJSON chunks",
                            "content": {
                                "application/json": {"schema": trained},
                                **NDJSON,
                            },
                        },
                        **_errors(400, 401, 404, 409, 413, 429, 500, 503),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "List the models",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "The models",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["models"],
                                        "properties": {
                                            "models": {"type": "array", "items": model}
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(401, 503),
                    },
                }
            },
            "/v1/models/import": {
                "post": {
                    "summary": "Serve a local Hugging Face Llama checkpoint",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["path", "id"],
                                    "properties": {
                                        "path": {
                                            "type": "string",
                                            "pattern": "^/",
                                            "description": "Absolute, on the server",
                                        },
                                        "id": {
                                            "type": "string",
                                            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                        },
                                        "stream": {"type": "boolean", "default": False},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The final object, or NDJSON chunks",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                **NDJSON,
                            },
                        },
                        **_errors(400, 401, 404, 409, 413, 429, 500, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The gateway is alive",
                    "responses": {"200": {"description": "Alive", "content": status}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The backend answers and is serving",
                    "responses": {
                        "200": {"description": "Ready", "content": status},
                        **_errors(503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3",
                            "content": {
                                "application/json": {"schema": {"type": "object"}}
                            },
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "The playground: a chat page",
                    "responses": {
                        "200": {
                            "description": "HTML",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
