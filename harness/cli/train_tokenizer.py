"""Train the SentencePiece tokenizer on a data set's captions; writes <data>/tokenizer.model.

    python tools/train_tokenizer.py --data data/emoji/train --vocab-size 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.data.reader import iter_captions
from harness.data.tokenizer import TOKENIZER_FILE, Tokenizer, train_tokenizer


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder (with manifest.json)")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, help=f"model file (default: <data>/{TOKENIZER_FILE})")
    args = parser.parse_args(argv)
    out = args.out or args.data / TOKENIZER_FILE
    captions = list(iter_captions(args.data))
    start = time.perf_counter()
    train_tokenizer(captions, out, vocab_size=args.vocab_size)
    tok = Tokenizer(out)
    ids, lengths = tok.encode(captions, max_len=512)
    print(f"{out}: vocab {tok.vocab_size} (asked {args.vocab_size}) from {len(captions)} captions in "
          f"{time.perf_counter() - start:.2f} s; tokens per caption incl. eos: mean {lengths.float().mean():.2f}, "
          f"max {int(lengths.max())}; e.g. {captions[0]!r} -> {ids[0, :int(lengths[0])].tolist()}")
    return out


def cli() -> None:
    """The console script `harness-train-tokenizer` (setup.cfg) and `python tools/train_tokenizer.py`."""
    try:
        main()
    except (OSError, ValueError) as e:  # bad input or a corrupt file: one line naming it, no traceback
        sys.exit(f"train_tokenizer: error: {e}")


if __name__ == "__main__":
    cli()
