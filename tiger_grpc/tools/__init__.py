"""Scripts apart from what serves requests: `make bench` (`bench`, with its peers,
statistics and report), `make bench-gpu` (`bench_gpu`), `make load` (`loadtest`)
and `make proto` (`codegen`). They may import anything of `tiger_grpc`; nothing
imports them.
"""
