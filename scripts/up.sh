#!/usr/bin/env bash
# Sets up (first run only) and starts Flowtide on the embedded default: a local multi-pool
# Ray cluster serving the tiny local model. Extra arguments go to `flowtide up`. Ctrl-C stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${FLOWTIDE_VENV:-.venv}/bin/flowtide" up "$@"
