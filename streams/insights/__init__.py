"""Segment insights: the worker's activity records, the agent that adds them up, their Redis
copy, and the marketers' HTTP API and dashboard (``segmenter api``)."""
