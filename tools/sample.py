"""Prompts -> images from any checkpoint, at any parallel layout.

A shim: the tool lives in harness/cli/sample.py (also the console script `harness-sample`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.sample import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
