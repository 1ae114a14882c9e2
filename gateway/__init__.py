"""Tiger's HTTP gateway: the documented JSON/NDJSON API in front of the gRPC server."""
