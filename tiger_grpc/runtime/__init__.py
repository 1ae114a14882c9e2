"""What the processes run on, below every other package: logging with request ids,
the shared process flags, port files and signals, the one process starter (used by
`make run`, the tests, the pytest plugin and the benchmark), the ML stack's import
lock, cancellation of long jobs, and the server's Prometheus metrics."""
