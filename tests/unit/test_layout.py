"""harness/parallel/layout.py: laying out again in one process replaces the previous layout's
process groups instead of adding to them."""

import os

import torch
import torch.distributed as dist

from harness.parallel.layout import initialize_layout


def _gloo_threads() -> int:
    """Threads of this process that poll a gloo group's sockets (Linux names them gloo_tcp_loop)."""
    tasks = f"/proc/{os.getpid()}/task"
    return sum(1 for t in os.listdir(tasks) if open(f"{tasks}/{t}/comm").read().strip() == "gloo_tcp_loop")


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
