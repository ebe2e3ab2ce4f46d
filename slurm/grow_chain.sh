#!/usr/bin/env bash
# Submit a whole greedy-growing run as a chain of Slurm jobs, each waiting for the one before
# (--dependency=afterok, --kill-on-invalid-dep=yes: a failed stage cancels the rest of the chain):
#
#   core (train) -> grow -> grow-frozen (train) [-> grow] -> grow-finetune (train) ...
#
#   bash slurm/grow_chain.sh [--parsable]
#   RUN_ROOT=runs/exp1 OVERRIDES="data.path=... data.heldout_path=..." bash slurm/grow_chain.sh
#
# STAGES lists the stage configs in order. Before a stage whose model grows (a higher resolution, or
# the shallow -> grown step) a grow job (slurm/grow.sbatch) writes its step-0 checkpoint from the
# previous stage's run directory; a stage at the same resolution (grow-finetune after grow-frozen)
# starts from the previous run directory through train.init_from. Each job runs at its own layout
# (checkpoints load at any layout), so resharding between stages is implicit.
#
# Variables (defaults in brackets):
#   STAGES            stage configs [configs/tiny/core.yaml configs/tiny/grow-frozen.yaml
#                     configs/tiny/grow-finetune.yaml]; configs/demo/*-256.yaml extend it to 256 px
#   RUN_ROOT          if set, stage X.yaml runs in $RUN_ROOT/X [each config's own train.run_dir]
#   OVERRIDES         key=value overrides appended to every stage and grow job (data paths, ...)
#   SBATCH_ARGS       sbatch options for every job (--partition=... --account=... --output=...)
#   GPUS_PER_TASK     GPUs per task [1]; 0 on a cluster without GPUs
#   Per job kind K in CORE, GROW, FROZEN, FINETUNE (stages core, grow jobs, grow-frozen, grow-finetune):
#   K_NODES [1]   K_TASKS (tasks per node = GPUs per node used) [1]
#   K_LAYOUT      layout overrides, e.g. "parallel.tp=2 parallel.pp=2" (DP is what the tasks leave)
#   K_OVERRIDES   other overrides for that kind only       K_SBATCH   sbatch options for that kind only
#   DRY_RUN=1     print the sbatch commands instead of submitting
# Prints one line per job (kind, job id, config, shape); with --parsable only the job ids, one line.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HARNESS_ROOT=$ROOT
PARSABLE=0
[ "${1:-}" = --parsable ] && PARSABLE=1

STAGES=${STAGES:-configs/tiny/core.yaml configs/tiny/grow-frozen.yaml configs/tiny/grow-finetune.yaml}
GPUS_PER_TASK=${GPUS_PER_TASK:-1}
read -r -a COMMON <<<"${OVERRIDES:-}"
read -r -a SBATCH_COMMON <<<"${SBATCH_ARGS:-}"
PY=${HARNESS_VENV:-$ROOT/.venv}/bin/python
[ -x "$PY" ] || { echo "error: no python at $PY: set HARNESS_VENV" >&2; exit 2; }

say() { if [ "$PARSABLE" = 0 ]; then echo "$@"; fi; }
var() { local name="$1_$2"; echo "${!name:-$3}"; }    # var KIND FIELD DEFAULT

describe() {   # CONFIG [overrides...] -> "stage resolution_px arch run_dir" (fails with the config error)
  "$PY" -c 'import sys
from harness.config import ConfigError, load
try:
    c = load(sys.argv[1], sys.argv[2:])
except ConfigError as e:
    sys.exit(f"error: {e}")
print(c.train.stage, c.model.resolution_px, c.model.arch, c.train.run_dir)' "$@"
}

submit() {     # KIND DEPENDENCY SCRIPT ARGS... -> job id on stdout
  local kind=$1 dep=$2; shift 2
  local nodes tasks
  nodes=$(var "$kind" NODES 1)
  tasks=$(var "$kind" TASKS 1)
  read -r -a extra <<<"$(var "$kind" SBATCH "")"
  local cmd=(sbatch --parsable --nodes="$nodes" --ntasks-per-node="$tasks"
             --gpus-per-node=$(( tasks * GPUS_PER_TASK )) "${SBATCH_COMMON[@]}" "${extra[@]}")
  [ -n "$dep" ] && cmd+=(--dependency=afterok:"$dep" --kill-on-invalid-dep=yes)
  cmd+=("$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "${cmd[*]}" >&2
    echo "DRY$RANDOM"
  else
    "${cmd[@]}" | cut -d';' -f1      # --parsable prints "id" or "id;cluster"
  fi
}

shape() {       # LABEL JOB KIND LAYOUT -> "LABEL  job N  [nodes x tasks, layout]"
  printf '%-13s job %-6s [%s node(s) x %s task(s)%s]' "$1" "$2" "$(var "$3" NODES 1)" "$(var "$3" TASKS 1)" "${4:+, $4}"
}

ids=()
prev_job="" prev_run="" prev_px="" prev_arch=""
for config in $STAGES; do
  name=$(basename "$config" .yaml)
  run_override=()
  [ -n "${RUN_ROOT:-}" ] && run_override=("train.run_dir=$RUN_ROOT/$name")
  desc=$(describe "$config" "${COMMON[@]}" "${run_override[@]}")
  read -r stage px arch run_dir <<<"$desc"
  case "$stage" in
    core) kind=CORE ;;
    grow-frozen) kind=FROZEN ;;
    grow-finetune) kind=FINETUNE ;;
    *) echo "error: $config: unknown train.stage $stage" >&2; exit 2 ;;
  esac
  read -r -a layout <<<"$(var "$kind" LAYOUT "")"
  read -r -a own <<<"$(var "$kind" OVERRIDES "")"
  read -r -a grow_layout <<<"$(var GROW LAYOUT "")"
  read -r -a grow_own <<<"$(var GROW OVERRIDES "")"
  args=("${COMMON[@]}" "${own[@]}" "${run_override[@]}")
  # A grown model (new resolution, or shallow -> grown) needs a grow job first; else init_from.
  desc=$(describe "$config" "${args[@]}")
  read -r stage px arch run_dir <<<"$desc"
  dep=$prev_job
  if [ -n "$prev_job" ] && { [ "$px" -gt "$prev_px" ] || [ "$arch" != "$prev_arch" ]; }; then
    grow_job=$(submit GROW "$prev_job" --job-name="harness-grow-to-$name" "$ROOT/slurm/grow.sbatch" \
               "$prev_run" "$config" "${args[@]}" "${grow_own[@]}" "${grow_layout[@]}")
    ids+=("$grow_job")
    say "$(shape grow "$grow_job" GROW "${grow_layout[*]:-}") $prev_run -> $run_dir, after $prev_job"
    dep=$grow_job
  elif [ -n "$prev_job" ]; then
    args+=("train.init_from=$prev_run")
  fi
  job=$(submit "$kind" "$dep" --job-name="harness-$name" "$ROOT/slurm/train.sbatch" "$config" "${args[@]}" \
        "${layout[@]}")
  ids+=("$job")
  say "$(shape "$stage" "$job" "$kind" "${layout[*]:-}") $config -> $run_dir${dep:+, after $dep}"
  prev_job=$job prev_run=$run_dir prev_px=$px prev_arch=$arch
done
if [ "$PARSABLE" = 1 ]; then echo "${ids[*]}"; else echo "jobs: ${ids[*]}  (squeue -j $(IFS=,; echo "${ids[*]}"))"; fi
