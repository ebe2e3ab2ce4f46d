"""Describe a checkpoint without loading its weights: stage, step, layout, data position, parameters

A shim: the tool lives in harness/cli/inspect_ckpt.py (also the console script `harness-inspect-ckpt`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.inspect_ckpt import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
