"""The throughput and latency benchmark (``python -m bench``, see the README)."""
