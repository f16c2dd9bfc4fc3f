"""Benchmarks of kafkaconsole against the embedded broker and Redis (see run.py)."""
