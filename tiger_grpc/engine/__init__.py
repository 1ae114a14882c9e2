"""The generation engine: requests become `Sequence`s (`request`), decoded by a
scheduler (`scheduler`: continuous batching over the fused graph; `serial`: the
per-sequence loop for plain optimum exports) on a runner (`fused`, `optimum`) over
ONNX Runtime (`providers`, `device`), with sampling, stopping and detokenizing.

Imports `api` and `config` only: never protobuf, the server or the model store.
"""
