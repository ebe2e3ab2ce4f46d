"""Train the SentencePiece tokenizer on a data set's captions; writes <data>/tokenizer.model.

A shim: the tool lives in harness/cli/train_tokenizer.py (also the console script `harness-train-tokenizer`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, installed or not
from harness.cli.train_tokenizer import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
