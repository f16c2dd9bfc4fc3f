#!/usr/bin/env bash
# The change-data-capture tier: PostgreSQL -> Debezium (Kafka Connect) -> Apache Kafka ->
# kafkaconsole -> pipeline, all started by the tests (tests/cdc) on free loopback ports.
#
# Needs Java 17+ and Maven (the Kafka Connect 4.3.0 runtime and Debezium's PostgreSQL
# connector 3.6.1.Final are fetched once into ~/.cache/kafkaconsole, beside the Apache Kafka
# broker's jars, and checked against tests/cdc/*.sha256) and PostgreSQL's server binaries
# (Debian: apt-get install postgresql; KAFKACONSOLE_PG_BIN points at another bin folder).
# What is missing is printed, and the tests skip with the reason. Runs on Apache Kafka only.
# Usage: scripts/cdc.sh [pytest args]      e.g. scripts/cdc.sh -k crash
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

[ -x .venv/bin/python ] || bash scripts/install.sh

.venv/bin/python -m tests.cdc.stack || echo "the tier's tests will skip"
.venv/bin/python -m tests.cdc.stack_jars || echo "the stack's jars could not be fetched: the tier's tests will skip"

status=0
KAFKACONSOLE_TEST_BROKER=${KAFKACONSOLE_TEST_BROKER:-apache} \
  .venv/bin/python -m pytest -p no:cacheprovider -m cdc --timeout=600 tests/cdc "$@" || status=$?
echo "cdc tier: $(( $(date +%s) - started ))s wall time (exit $status)"
exit $status
