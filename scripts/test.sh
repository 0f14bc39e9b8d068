#!/usr/bin/env bash
# Sets up (first run only) and runs the whole test suite. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` to skip the slow end-to-end tests locally.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${FLOWTIDE_VENV:-.venv}/bin/python" -m pytest "$@"
