#!/usr/bin/env bash
# The main job on a fresh machine: set up, fetch and shard the emoji data, train the core at 64 px,
# sample held-out captions, write images and plots under runs/demo/.
#   bash tools/demo.sh            (DEMO_MINUTES=12 bounds the core's training time)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export VENV=${VENV:-$ROOT/.venv}
START=$(date +%s)
bash tools/setup_env.sh
bash tools/prepare_demo_data.sh
PY=$VENV/bin/python
MINUTES=${DEMO_MINUTES:-12}

echo "[demo] core pre-training: small Shallow-UViT, 64 px, at most $MINUTES min"
"$PY" -m harness.train --config configs/demo/core.yaml train.time_limit_minutes="$MINUTES"

echo "[demo] done in $(( $(date +%s) - START )) s; outputs:"
ls -1 runs/demo/core/*.png
