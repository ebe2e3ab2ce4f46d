"""harness/distributed/host_memory.py: a large CPU tensor freed and allocated again reuses the
process's memory instead of faulting in fresh pages (what cost a 1024 px CPU step half its time)."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from harness.distributed.host_memory import keep_freed_memory
if sys.argv[1] == "launch":                              # what every entry point runs first
    from harness.distributed.launch import init_distributed
    init_distributed()
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    live = [torch.ones(10 * 2**20) for _ in range(6)]   # 6 x 40 MB of activations, freed together
    del live
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_tensors_are_reused_without_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    # 5 x 240 MB is 307,200 pages of 4 KB: glibc's default faults every one in again; kept, they are
    # reused (one block a round still lands on fresh pages)
    assert 3 * kept < default, (kept, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_init_distributed_keeps_freed_memory():
    _, launched = _faults("launch")
    _, default = _faults("default")
    # after the process group's threads have allocated, one to three blocks a round land on fresh pages
    assert 4 * launched < 3 * default, (launched, default)
