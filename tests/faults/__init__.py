"""Fault-injection harness: real broker, Redis and kafkaconsole processes, an oracle.

``python -m tests.faults`` runs every scenario and writes RELIABILITY.md; the test suite runs a
fast subset (tests/test_faults_fast.py).
"""
