"""Target devices (specs as data), runtimes and on-device latency profiling (local or TVM RPC)."""
