"""The same held-out captions sampled by every stage of a growth chain, side by side, as one PNG.

A shim: the tool lives in harness/cli/stage_grid.py (also the console script `harness-stage-grid`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.stage_grid import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
