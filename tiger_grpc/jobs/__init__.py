"""Long jobs on worker threads, streamed to their caller: fine-tuning (`training`)
and importing a local checkpoint (`importing`), both through the models' build
pipeline; `worker` runs a job and stops it when the caller leaves.

Imports `models`, `engine`, `api` and `runtime`; never `server` or protobuf.
"""
