"""Convert a checkpoint to another (TP, PP, DP) layout, or to / from one safetensors release file.

A shim: the tool lives in harness/cli/reshard.py (also the console script `harness-reshard`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.reshard import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
