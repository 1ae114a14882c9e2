"""`python -m tiger_grpc.server`: the same as `tiger-server`."""

from .main import main

main()
