#!/usr/bin/env bash
# The integration tier: the airflow pipeline kind against a real Apache Airflow 3 (api v2) and
# Airflow 2 (api v1), both started by the tests (airflow standalone, SQLite, free ports).
#
# Each Airflow lives in its own virtual environment under ~/.cache/kafkaconsole (beside the
# Apache Kafka jars, shared by every checkout; KAFKACONSOLE_CACHE_DIR moves it), built once
# from the pins in tests/integration/airflow-<version>.txt and reused by later runs. The project's own
# .venv is made by scripts/test.sh (or here, if it is missing).
# Usage: scripts/integration.sh [pytest args]      e.g. scripts/integration.sh -k airflow3
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

AIRFLOW3_VERSION=3.3.2
AIRFLOW2_VERSION=2.10.5
PYTHON=${PYTHON:-python3}
CACHE_DIR=${KAFKACONSOLE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kafkaconsole}
mkdir -p "$CACHE_DIR"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
fi

# airflow_venv VERSION: make CACHE_DIR/airflow-VERSION unless a complete one is there already.
airflow_venv() {
  local version=$1 dir=$CACHE_DIR/airflow-$1 pins=tests/integration/airflow-$1.txt
  if [ -f "$dir/.complete" ] && cmp -s "$pins" "$dir/.complete"; then
    echo "Airflow $version: cached in $dir"
    return
  fi
  local t0
  t0=$(date +%s)
  echo "Airflow $version: installing into $dir (pinned by $pins)..."
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q "apache-airflow==$version" -c "$pins"
  "$dir/bin/airflow" version > /dev/null
  cp "$pins" "$dir/.complete"
  echo "Airflow $version: installed in $(( $(date +%s) - t0 ))s"
}

airflow_venv "$AIRFLOW3_VERSION"
airflow_venv "$AIRFLOW2_VERSION"

status=0
KAFKACONSOLE_AIRFLOW3_BIN="$CACHE_DIR/airflow-$AIRFLOW3_VERSION/bin" \
KAFKACONSOLE_AIRFLOW2_BIN="$CACHE_DIR/airflow-$AIRFLOW2_VERSION/bin" \
  .venv/bin/python -m pytest -p no:cacheprovider -m integration --timeout=900 tests/integration "$@" \
  || status=$?
echo "integration tier: $(( $(date +%s) - started ))s wall time (exit $status)"
exit $status
