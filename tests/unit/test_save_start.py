"""harness/checkpoint/io.py: the first save of a process starts Megatron's shard-writer result queue
without re-running the launching script (Megatron-core 0.16.1 would spawn a process that imports it,
torch and Megatron included: 5.5 s of every grow, reshard and first training save on 2 CPU cores)."""

import subprocess
import sys

import psutil

SCRIPT = """
import sys
from pathlib import Path
if __name__ != "__main__":                  # the script imported again by a spawned helper process
    Path(sys.argv[2]).write_text(__name__)
else:
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from harness.checkpoint import io
    from harness.distributed.launch import init_distributed
    from harness.parallel.layout import initialize_layout
    init_distributed()
    initialize_layout(1, 1, seed=0)
    weight = torch.arange(6.0).reshape(2, 3)
    state = {"w": ShardedTensor.from_rank_offsets("w", weight, replica_id=0)}
    saved = io.save(sys.argv[1], 3, state, {"run_id": "probe"})
    print(saved.name, io.verify(saved), torch.equal(io.read_tensors(saved)["w"], weight))
"""


def test_the_first_save_does_not_run_the_launching_script_again(tmp_path):
    script, marker = tmp_path / "launch.py", tmp_path / "imported-again"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(marker)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not marker.exists(), f"the save re-imported the launching script as {marker.read_text()}"
    assert out.stdout.split()[-3:] == ["step_0000003", "[]", "True"], out.stdout[-500:]


# The Manager behind that queue outlives each save: it must die with its rank and survive the
# scheduler's signals to the rank's process group (the rank checkpoints through it on SIGTERM).
RANK = """
import os, signal, sys, time
import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.strategies import filesystem_async
from harness.checkpoint import io
from harness.distributed.launch import init_distributed
from harness.parallel.layout import initialize_layout
from harness.train.signals import StopSignals
init_distributed()
initialize_layout(1, 1, seed=0)
stop = StopSignals()
state = {"w": ShardedTensor.from_rank_offsets("w", torch.ones(4), replica_id=0)}
io.save(sys.argv[1], 1, state, {"run_id": "probe"})
print("manager", filesystem_async._results_queue._manager._process.pid, flush=True)
if sys.argv[2] == "signal-the-group":
    os.killpg(os.getpgid(0), signal.SIGTERM)        # what Slurm does to a job step at preemption
    time.sleep(1)
    saved = io.save(sys.argv[1], 2, state, {"run_id": "probe"})
    print(stop.received, saved.name, io.verify(saved), flush=True)
else:
    time.sleep(600)                                 # until the test kills this rank
"""


def _rank(tmp_path, mode: str) -> subprocess.Popen:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _manager_pid(proc: subprocess.Popen) -> int:
    for line in proc.stdout:
        if line.startswith("manager "):
            return int(line.split()[1])
    raise AssertionError(f"the rank ended before its first save: {proc.stderr.read()[-2000:]}")


def _gone(pid: int, timeout: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_writer_queue_dies_with_a_killed_rank(tmp_path):
    rank = _rank(tmp_path, "wait")
    manager = _manager_pid(rank)
    rank.kill()
    rank.wait(30)
    gone = _gone(manager, timeout=15)
    if not gone:
        psutil.Process(manager).kill()
    assert gone, f"the writer-queue Manager (pid {manager}) outlived its SIGKILLed rank"


def test_a_rank_still_saves_after_its_process_group_gets_sigterm(tmp_path):
    rank = _rank(tmp_path, "signal-the-group")
    _manager_pid(rank)
    out, err = rank.communicate(timeout=120)
    assert rank.returncode == 0, err[-2000:]
    assert out.split()[-3:] == ["SIGTERM", "step_0000002", "[]"], (out, err[-2000:])
