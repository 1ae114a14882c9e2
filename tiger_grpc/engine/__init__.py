"""The generation engine: ONNX Runtime sessions, a decode loop, sampling and stopping."""
