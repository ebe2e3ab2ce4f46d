#!/usr/bin/env bash
# The test suite on a fresh machine: set up the virtualenv, fetch the demo data (some tests read
# it), then run every tier: tests/unit (one process), tests/dist (2-4 gloo/MPI processes) and
# tests/slurm (a real local Slurm, brought up by the tests' fixture where slurm-wlm can be installed).
# Tests marked `slow` (over 5 minutes on a 2-core machine: the 20-kill chaos test, the chain
# rehearsal) run with SLOW=1.
#   bash tools/run_tests.sh [pytest args]        SLOW=1 bash tools/run_tests.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export VENV=${VENV:-$ROOT/.venv}
bash tools/setup_env.sh
bash tools/prepare_demo_data.sh
if [ "${SLOW:-0}" = 1 ]; then MARKS=(); else MARKS=(-m "not slow"); fi
exec "$VENV/bin/python" -m pytest tests -q "${MARKS[@]}" "$@"
