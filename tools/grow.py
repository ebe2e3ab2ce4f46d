"""Grow a stage's checkpoint into the next stage's step-0 checkpoint (rules: harness/growth/rules.py).

A shim: the tool lives in harness/cli/grow.py (also the console script `harness-grow`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.grow import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
