"""Segment insights: the tables the worker adds its activity records up in, their Redis copy,
and the marketers' HTTP API and dashboard (``segmenter api``)."""
