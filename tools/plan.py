"""Plan a (TP, PP, DP, micro-batch) layout for a model size on a cluster: memory per GPU, traffic, step time.

A shim: the tool lives in harness/cli/plan.py (also the console script `harness-plan`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.plan import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
