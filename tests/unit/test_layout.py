"""harness/parallel/layout.py: laying out again in one process replaces the previous layout's
process groups instead of adding to them."""

import os
from pathlib import Path

import torch
import torch.distributed as dist

from harness.config import load
from harness.parallel.layout import initialize_layout
from harness.train.loop import train


def _gloo_threads() -> int:
    """Threads of this process that poll a gloo group's sockets (Linux names them gloo_tcp_loop)."""
    return sum(_thread_name(t) == "gloo_tcp_loop" for t in Path(f"/proc/{os.getpid()}/task").iterdir())


def _thread_name(task: Path) -> str:
    """A thread's name, or "" for one that exited after the directory was listed (a data loader's or
    checkpoint writer's thread can end at any moment)."""
    try:
        return (task / "comm").read_text().strip()
    except FileNotFoundError:
        return ""


def test_a_new_layout_destroys_the_previous_ones_groups(world):
    """Each layout makes ~20 gloo groups, each with a thread waking ~100 times a second: an
    experiment or a test session that trained run after run in one process ran 10x slower."""
    initialize_layout(1, 1)
    threads = _gloo_threads()
    for _ in range(3):
        layout = initialize_layout(1, 1)
    assert _gloo_threads() == threads
    value = torch.ones(2)
    dist.all_reduce(value, group=layout.dp_group)          # the new layout's groups work
    assert value.tolist() == [1.0, 1.0]


def test_bf16_runs_in_one_process_do_not_add_threads(world, tiny_overrides, tmp_path):
    """What experiments do: bf16 runs with the distributed optimizer, one after another in one
    process; each lays out its own groups and the next run's layout destroys them."""
    args = tiny_overrides + ["train.steps=1", "optim.decay_steps=1", "train.precision=bf16",
                             "parallel.distributed_optimizer=true"]
    counts = []
    for i in range(3):
        train(load(None, args + [f"train.run_dir={tmp_path / f'run{i}'}"]))
        counts.append(_gloo_threads())
    assert counts[0] == counts[1] == counts[2], counts
