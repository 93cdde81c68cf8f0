#!/usr/bin/env bash
# The test suite: lint, types, then every test (real Triton, eBPF and Prometheus included).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(pwd)/.venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy --strict exporter/"; mypy --strict exporter
echo "== pytest"; exec pytest -q -rs --timeout 900 "$@"
