"""The gRPC server: the process (`main`: configuration and life cycle; `launch`:
`make run`, which starts it with the gateway), the server (`app`), the thin
servicer (`servicer`), bearer-key auth (`auth`) and the engine's gauges
(`observe`). The top of the stack: it may import every other package of
`tiger_grpc`, and nothing imports it but the tools.
"""
