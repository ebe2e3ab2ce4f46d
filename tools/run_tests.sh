#!/usr/bin/env bash
# The test suite on a fresh machine: set up the virtualenv, fetch the demo data (some tests read
# it), then run every tier: tests/unit (one process), tests/dist (2-4 gloo/MPI processes) and
# tests/slurm (a real local Slurm, brought up by the tests' fixture where slurm-wlm can be installed).
#   bash tools/run_tests.sh [pytest args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export VENV=${VENV:-$ROOT/.venv}
bash tools/setup_env.sh
bash tools/prepare_demo_data.sh
exec "$VENV/bin/python" -m pytest tests -q "$@"
