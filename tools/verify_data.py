"""Verify data sets against their manifests: sha256 of every shard, layout, and a decode of random samples.

A shim: the tool lives in harness/cli/verify_data.py (also the console script `harness-verify-data`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.verify_data import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
