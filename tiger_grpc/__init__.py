"""Tiger: a gRPC server that generates text with Llama-family models on ONNX Runtime."""

__version__ = "0.1.0"
