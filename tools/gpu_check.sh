#!/usr/bin/env bash
# The first check on a GPU machine (one GPU is enough; <= 8 min on an H100/H200):
#   1. the environment: torch, CUDA, NCCL, GPU name, the measured bf16 matmul rate;
#   2. the `gpu` pytest tier (tests/gpu: a bf16 `small` step on CUDA with the CPU compatibility
#      layer inactive, NCCL; TP2/PP2 parity when two GPUs are visible) and, on the GPU, exact resume
#      and the bf16 stage-boundary invariant (tests/unit/test_stage_boundaries.py);
#   3. tools/bench_step.py --cases gpu: `small` and the core at the 2b and 8b widths, with MFU
#      against the measured bf16 matmul rate.
# It writes $OUT_DIR/gpu_check.json (environment, benchmark rows, test outcomes) and
# $OUT_DIR/gpu_check.md, a section to paste into BENCHMARKS.md. Without a GPU it says so in one line.
#   bash tools/gpu_check.sh [OUT_DIR]            PYTHON=python3 bash tools/gpu_check.sh /tmp/out
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT_DIR=${1:-$ROOT/gpu_check}
mkdir -p "$OUT_DIR"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PYTHON: every gpu test is skipped, nothing to measure"
    exit 0
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Bit-exact resume needs deterministic cuBLAS workspaces (CUDA's documented setting).
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
timeout "${GPU_CHECK_TEST_S:-360}" "$PYTHON" -m pytest -q -p no:cacheprovider -rs --junitxml="$OUT_DIR/gpu_tests.xml" \
    tests/gpu tests/unit/test_stage_boundaries.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
"$PYTHON" tools/bench_step.py --cases gpu --steps 10 --json "$OUT_DIR/bench_gpu.json" 2>&1 | tee "$OUT_DIR/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
"$PYTHON" tools/gpu_report.py "$OUT_DIR" --tests-rc "$tests_rc" --bench-rc "$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
