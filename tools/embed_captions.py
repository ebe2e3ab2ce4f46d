"""Precompute a frozen text encoder's per-token states into a data set's shards (`text_emb`), the

A shim: the tool lives in harness/cli/embed_captions.py (also the console script `harness-embed-captions`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.embed_captions import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
