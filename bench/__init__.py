"""The throughput and latency benchmark (``python -m bench``, see docs/performance.md)."""
