#!/usr/bin/env bash
# A real one-node Slurm on this machine, for tests and for trying the sbatch scripts:
# Debian slurm-wlm (22.05) + munge, daemons started by hand (no systemd needed).
#
#   bash slurm/local_cluster.sh up        install if absent (apt-get, root), configure, start, wait for idle
#   bash slurm/local_cluster.sh status    daemons, partitions, queue
#   bash slurm/local_cluster.sh down      stop slurmctld, slurmd and munged
#
# `up` is idempotent: on a cluster that is already up and idle it only says so. The configuration is
# tuned for fast tests: a requeued job restarts after ~15 s (AuthInfo=cred_expire=10, the scheduler
# every 5 s), finished jobs stay visible to `scontrol show job` for an hour (MinJobAge=3600; there is
# no accounting database, so no sacct), job completions are also logged to $LOG_DIR/jobcomp.log.
# Partitions: `debug` (default) and `high`, whose jobs preempt debug jobs (REQUEUE).
# Exit status: 0 up (or down), 1 daemons did not come up (the log tails are printed),
# 3 Slurm is not installed and cannot be (not root, no apt-get, or apt failed).
# Only touches a slurm.conf that it wrote itself (first line is its marker).
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
MARK="# written by slurm/local_cluster.sh"
NODE=$(hostname -s)

say() { echo "[local_cluster] $*"; }
now_ms() { date +%s%3N; }
T0=$(now_ms)
elapsed() { echo "$(( $(now_ms) - T0 )) ms"; }

installed() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null 2>&1

install() {
  installed && return 0
  if [ "$(id -u)" != 0 ]; then say "slurm-wlm/munge are not installed and installing them needs root"; exit 3; fi
  if ! command -v apt-get >/dev/null; then say "slurm-wlm/munge are not installed and there is no apt-get"; exit 3; fi
  say "installing slurm-wlm munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends slurm-wlm munge)
  if ! "${apt[@]}" >/tmp/local_cluster-apt.log 2>&1; then
    apt-get update -q >>/tmp/local_cluster-apt.log 2>&1 || true
    if ! "${apt[@]}" >>/tmp/local_cluster-apt.log 2>&1; then
      tail -5 /tmp/local_cluster-apt.log; say "apt-get install slurm-wlm munge failed"; exit 3
    fi
  fi
  installed || { say "slurm-wlm installed but slurmctld/slurmd/sbatch/munged not on PATH"; exit 3; }
  say "installed $(dpkg-query -W -f '${Version}' slurm-wlm) ($(elapsed))"
}

write_config() {
  if [ -f "$CONF" ] && [ "$(head -1 "$CONF")" != "$MARK" ]; then
    say "$CONF exists and was not written by this script; not touching it"; exit 1
  fi
  local cpus mem_mb proctrack
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  # proctrack/cgroup keeps no process of a finished job alive (linuxproc lets a backgrounded one escape);
  # it needs the cgroup v1 freezer here (Slurm 22.05's cgroup/v2 plugin wants systemd).
  if [ -d /sys/fs/cgroup/freezer ]; then proctrack=cgroup; else proctrack=linuxproc; fi
  mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
  local tmp; tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARK
ClusterName=harness-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only after the credential lifetime (default 120 s).
AuthInfo=cred_expire=10
MpiDefault=pmi2
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=3600
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  if [ "$proctrack" = cgroup ]; then
    printf '%s\nCgroupAutomount=yes\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' "$MARK" \
      >"$CONF_DIR/cgroup.conf"
  fi
  if ! cmp -s "$tmp" "$CONF"; then CONFIG_CHANGED=1; mv "$tmp" "$CONF"; chmod 644 "$CONF"; else rm -f "$tmp"; fi
}

# A daemon is running if its pid file names a live process (not a zombie: PID 1 here reaps late).
running() { local st; [ -s "$1" ] && st=$(ps -o stat= -p "$(cat "$1")" 2>/dev/null) && [[ $st != Z* ]]; }
munge_up() { running /run/munge/munged.pid; }
ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
slurmd_up() { running /run/slurmd.pid; }
node_state() { sinfo -h -n "$NODE" -p debug -o %T 2>/dev/null | head -1; }

start_munge() {
  munge_up && return 0
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
  fi
  if id munge >/dev/null 2>&1; then
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged
  else
    chmod 400 /etc/munge/munge.key
    munged --force
  fi
}

logs() {
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
    [ -f "$f" ] && { echo "--- tail $f"; tail -15 "$f"; }
  done
}

up() {
  install
  CONFIG_CHANGED=0
  write_config
  if [ "$CONFIG_CHANGED" = 0 ] && munge_up && ctld_up && slurmd_up && [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]
  then
    say "already up: node $NODE $(node_state) ($(elapsed))"; return 0
  fi
  if [ "$CONFIG_CHANGED" = 1 ] && { ctld_up || slurmd_up; }; then
    say "configuration changed: restarting the daemons"; stop_daemons
  fi
  start_munge
  ctld_up || slurmctld
  slurmd_up || slurmd
  local state=""
  for _ in $(seq 1 120); do
    state=$(node_state)
    [ "$state" = idle ] && break
    # A node left DOWN/DRAIN by an earlier run comes back with an explicit resume.
    case "$state" in down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;; esac
    sleep 0.25
  done
  if [ "$state" != idle ]; then logs; say "node $NODE is '${state:-unknown}', not idle, after 30 s"; exit 1; fi
  say "up: node $NODE idle, partitions $(sinfo -h -o %P | tr '\n' ' ')(set-up $(elapsed))"
}

stop_daemons() {
  scontrol shutdown >/dev/null 2>&1 || true             # stops slurmctld and every slurmd
  for _ in $(seq 1 40); do
    running /run/slurmctld.pid || slurmd_up || break
    sleep 0.25
  done
  for pid_file in /run/slurmd.pid /run/slurmctld.pid; do   # if shutdown could not reach them
    if running "$pid_file"; then kill "$(cat "$pid_file")" 2>/dev/null || true; fi
  done
}

down() {
  if ! installed; then say "Slurm is not installed: nothing to stop"; return 0; fi
  stop_daemons
  if munge_up; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
  say "down ($(elapsed))"
}

status() {
  if ! installed; then say "Slurm is not installed"; exit 3; fi
  echo "munged:    $(munge_up && echo running || echo stopped)"
  echo "slurmctld: $(ctld_up && echo UP || echo down)"
  echo "slurmd:    $(slurmd_up && echo running || echo stopped)"
  if ctld_up; then sinfo; squeue; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
