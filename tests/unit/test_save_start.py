"""harness/checkpoint/io.py: the first save of a process starts Megatron's shard-writer result queue
without re-running the launching script (Megatron-core 0.16.1 would spawn a process that imports it,
torch and Megatron included: 5.5 s of every grow, reshard and first training save on 2 CPU cores)."""

import subprocess
import sys

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
