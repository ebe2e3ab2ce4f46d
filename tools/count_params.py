"""Parameter counts of every model size, built on the meta device (no memory, no compute).

A shim: the tool lives in harness/cli/count_params.py (also the console script `harness-count-params`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.count_params import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
