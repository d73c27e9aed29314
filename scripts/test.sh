#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, real OVS, Mininet test bed) and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -ra "$@"
