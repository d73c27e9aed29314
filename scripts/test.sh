#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, real OVS, Mininet test bed) and the linter; then
# the overlay, replicas, flow-log and security suites again on test beds as across hosts (testbed up --tls:
# switches, sites' OVSDB and the store over TLS on a management network). Arguments go to pytest and skip
# that second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -ra "$@"
if [ "$#" -eq 0 ]; then
    CLOUDWEAVE_TESTBED_TLS=1 .venv/bin/python -m pytest -ra tests/e2e/test_testbed.py tests/e2e/test_replicas.py \
        tests/e2e/test_flowlog.py tests/e2e/test_secops.py
fi
