#!/usr/bin/env bash
# Install kafkaconsole with its test dependencies into .venv and run the whole test suite.
# The suite starts its own Kafka broker and Redis server (see tests/conftest.py): Apache Kafka
# when Java and Maven are installed (its jars are fetched once, with Maven, into
# ~/.cache/kafkaconsole), else Tansu with a notice. KAFKACONSOLE_TEST_BROKER=apache|tansu
# chooses. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
