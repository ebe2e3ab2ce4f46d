"""Verify data sets against their manifests: sha256 of every shard, layout, and a decode of random samples.

    python tools/verify_data.py data/emoji/train data/emoji/heldout --samples 4
    mpiexec -n 8 python tools/verify_data.py /datasets/cc12m/256      # shards split over the ranks

Prints one line per bad shard (file and what is wrong) and a summary; exit status 0 when every
shard is good, 1 otherwise (a missing or invalid manifest included). See harness/data/verify.py.
"""

from __future__ import annotations

import argparse
import sys
import time

from harness.data.mpi import mpi_comm, rank_and_size
from harness.data.verify import verify_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", help="data set folder(s) with manifest.json")
    parser.add_argument("--samples", type=int, default=4, help="random samples decoded per shard (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples picked")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    comm = mpi_comm()
    rank, size = rank_and_size(comm)
    bad = 0
    for root in args.data:
        start = time.perf_counter()
        try:
            problems = verify_dataset(root, comm, samples=args.samples, seed=args.seed, progress=not args.no_progress)
        except (OSError, ValueError) as e:           # the manifest itself: missing or invalid
            if rank == 0:
                print(f"BAD {e}", flush=True)
            bad += 1
            continue
        if rank == 0:
            for line in problems:
                print(f"BAD {line}", flush=True)
            bad += len(problems)
            print(f"{root}: {'ok' if not problems else f'{len(problems)} bad shard(s)'} "
                  f"({time.perf_counter() - start:.1f} s, {size} rank(s))", flush=True)
    if comm is not None:
        bad = comm.bcast(bad, root=0)
    return 1 if bad else 0


def cli() -> None:
    """The console script `harness-verify-data` (setup.cfg) and `python tools/verify_data.py`."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
