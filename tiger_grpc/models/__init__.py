"""Models: the store on disk (`store`), which fused graph serves (`precision`), the
one build pipeline that turns a Hugging Face directory into a stored model
(`pipeline`, with `export` and the fused-graph builder in `graph`), the embedded
default model (`embedded`), and the registry that loads models and generates
(`registry`, `loaded`).

Imports `engine`, `api`, `config` and `runtime`; never `jobs`, `server` or protobuf.
"""
