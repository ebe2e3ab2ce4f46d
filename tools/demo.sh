#!/usr/bin/env bash
# The main job on a fresh machine: set up, fetch and shard the emoji data, train the core at 64 px,
# grow it to 128 px (new levels around the frozen core, then end to end), sample held-out captions
# at every stage, write images and plots under runs/demo/.
#   bash tools/demo.sh                 DEMO_MINUTES=5 bounds the core, GROW_MINUTES=1.75 each growth phase
# Each stage's budget is minutes: it plans the steps that fit them and decays its learning rate by
# its end (harness/train/budget.py).
#   DEMO_256=1 bash tools/demo.sh      also grows 128 -> 256 px (keeping the 128 px levels)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export VENV=${VENV:-$ROOT/.venv}
START=$(date +%s)
bash tools/setup_env.sh
bash tools/prepare_demo_data.sh
PY=$VENV/bin/python
CORE_MIN=${DEMO_MINUTES:-5}
GROW_MIN=${GROW_MINUTES:-1.75}
OUT=runs/demo

stage() {   # name config [extra overrides...]: train a stage; an existing run directory resumes
  echo "[demo] $1"     # no sample grid at each stage's end: stages.png samples every stage once
  "$PY" -m harness.train --config "$2" train.num_samples=0 "${@:3}"
}
grow() {    # source config [overrides...]: write the next stage's step-0 checkpoint once
  local run; run=$("$PY" -c "import sys; from harness.config import load; print(load(sys.argv[1], sys.argv[2:]).train.run_dir)" "${@:2}")
  [ -f "$run/latest" ] || "$PY" tools/grow.py --source "$1" --config "$2" "${@:3}"
}

stage "core pre-training: small Shallow-UViT, 64 px, at most $CORE_MIN min" configs/demo/core.yaml \
  train.time_limit_minutes="$CORE_MIN"
grow $OUT/core configs/demo/grow-frozen.yaml
stage "grow, core frozen: new levels at 128 px, at most $GROW_MIN min" configs/demo/grow-frozen.yaml \
  train.time_limit_minutes="$GROW_MIN"
stage "grow, end to end at 128 px, at most $GROW_MIN min" configs/demo/grow-finetune.yaml \
  train.time_limit_minutes="$GROW_MIN"
STAGES=($OUT/core $OUT/grow-frozen $OUT/grow-finetune)
if [ "${DEMO_256:-0}" = 1 ]; then
  grow $OUT/grow-finetune configs/demo/grow-frozen-256.yaml
  stage "grow again, 128 -> 256 px levels frozen" configs/demo/grow-frozen-256.yaml train.time_limit_minutes="$GROW_MIN"
  stage "grow again, end to end at 256 px" configs/demo/grow-finetune-256.yaml train.time_limit_minutes="$GROW_MIN"
  STAGES+=($OUT/grow-frozen-256 $OUT/grow-finetune-256)
fi
echo "[demo] sampling held-out captions at every stage"
"$PY" tools/stage_grid.py "${STAGES[@]}" --out $OUT/stages.png
"$PY" tools/inspect_ckpt.py "${STAGES[-1]}"

echo "[demo] done in $(( $(date +%s) - START )) s; outputs:"
ls -1 $OUT/*.png $OUT/*/*.png
