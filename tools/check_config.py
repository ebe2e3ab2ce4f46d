"""Pre-flight check of a stage before a job starts its ranks (slurm/*.sbatch run it first).

A shim: the tool lives in harness/cli/check_config.py (also the console script `harness-check-config`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.check_config import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
