"""Tiger's HTTP gateway: the guide's JSON/NDJSON API in front of the gRPC server.

`app` builds the aiohttp application; `native` holds the guide's routes and `ops`
the operational ones; `responses` and `chunks` turn gRPC calls and events into
HTTP answers; `backend` is the one gRPC channel; `openapi` the document; `main` the
process. It talks to the server over gRPC only: it imports `tiger_grpc.api`,
`tiger_grpc.runtime`, `tiger_grpc.config` and the generated code, never the
engine, the models or the ML stack.
"""
