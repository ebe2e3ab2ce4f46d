"""The paper's three claims at small scale, on the emoji data: grown vs scratch over compute with
seeds and ablations, the core kept through growth, bigger cores align better.

A shim: the tool lives in harness/cli/claims.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.claims import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
