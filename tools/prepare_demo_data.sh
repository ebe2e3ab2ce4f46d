#!/usr/bin/env bash
# Idempotent: fetch the Fluent 3D emoji (npm), write the train / held-out HDF5 data sets at 256 px,
# train the SentencePiece tokenizer. Each step is skipped when its output exists.
#   bash tools/prepare_demo_data.sh [data]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${VENV:-$ROOT/.venv}/bin/python
DATA=${1:-$ROOT/data}
RAW=$DATA/raw/fluent-emoji-3d

"$PY" "$ROOT/tools/fetch_demo_data.py" --out "$DATA/raw"
for split in train heldout; do
  if [ ! -f "$DATA/emoji/$split/manifest.json" ]; then
    "$PY" "$ROOT/tools/make_shards.py" --images-root "$RAW" --captions "$RAW/metadata.jsonl" --split "$split" \
      --out "$DATA/emoji/$split" --resolution 256
  fi
done
if [ ! -f "$DATA/emoji/train/tokenizer.model" ]; then
  "$PY" "$ROOT/tools/train_tokenizer.py" --data "$DATA/emoji/train" --vocab-size 1000
fi
