"""Evaluate a checkpoint on a held-out data set: FID, text alignment, eval loss -> JSON + PNG.

A shim: the tool lives in harness/cli/evaluate.py (also the console script `harness-evaluate`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.evaluate import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
