#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
source "$ROOT/tools/ros_env.sh"
cd "$ROOT"
echo "== ruff"
ruff check .
echo "== pytest"
exec python -m pytest -q -p no:cacheprovider "$@" test
