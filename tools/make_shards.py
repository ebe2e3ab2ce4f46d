"""Turn images + captions into sharded HDF5 data sets (one per --resolution), with a report of what was skipped.

A shim: the tool lives in harness/cli/make_shards.py (also the console script `harness-make-shards`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.make_shards import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
