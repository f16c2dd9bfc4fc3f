#!/usr/bin/env bash
# Install kafkaconsole with its test dependencies into .venv and run the whole test suite.
# The suite starts its own Kafka-protocol broker and Redis server (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
exec .venv/bin/python -m pytest "$@"
