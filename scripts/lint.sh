#!/usr/bin/env bash
# Static checks: ruff (lint + format), import-linter (the engine never imports Textual/Rich), mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check kafkaconsole tests
.venv/bin/ruff format --check kafkaconsole tests
.venv/bin/lint-imports
.venv/bin/mypy kafkaconsole
