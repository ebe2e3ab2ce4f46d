"""Turn images + captions into sharded HDF5 data sets (one per --resolution), with a report of what was skipped.

    # an image folder + JSONL/CSV captions (rows: file, caption[, id][, split])
    python tools/make_shards.py --images-root data/raw/fluent-emoji-3d \\
        --captions data/raw/fluent-emoji-3d/metadata.jsonl --split train --out data/emoji/train --resolution 256
    # webdataset tars as img2dataset writes them ({key}.jpg|png|webp + {key}.txt / {key}.json "caption")
    mpiexec -n 8 python tools/make_shards.py --input '/data/cc12m/*.tar' --out /datasets/cc12m --resolution 256 1024
    # parquet with image bytes (or datasets' {"bytes": ...} structs) and captions
    python tools/make_shards.py --input 'export/*.parquet' --image-column jpg --caption-column txt --out ds

Several resolutions write OUT/<R>/ each; the higher ones hold only the sources at least that large,
under the same ids (--upsample stores smaller sources upsampled: the emoji rehearsal at 1024 px).
Images are composited on white, centre-cropped to a square and resized (the exact area average
when shrinking by an integer factor). Skipped, counted and named in OUT/ingest-report.json: missing
or undecodable images (--strict: an error), empty or over-long captions, aspect ratios outside
[--min-aspect, --max-aspect], sources below the lowest resolution, repeated ids and images. Under
mpiexec the ranks share the input shards (tars, parquet row groups, slices of the captions file);
a rerun after an interruption keeps the finished ones. See harness/data/ingest.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.data.filters import Policy
from harness.data.format import COMPRESSIONS
from harness.data.ingest import Options, Result, ingest
from harness.data.mpi import mpi_comm, rank_and_size
from harness.data.sources import folder_units, input_units


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("input (either --input, or --images-root with --captions)")
    src.add_argument("--input", nargs="+", metavar="GLOB", help="webdataset .tar / .tar.gz or .parquet files (parquet needs the [ingest] extra: pyarrow)")
    src.add_argument("--images-root", type=Path, help="folder the captions file's `file` entries are relative to")
    src.add_argument("--captions", type=Path, help="JSONL or CSV: file, caption[, id][, split]")
    src.add_argument("--split", help="captions file: keep only rows with this split")
    src.add_argument("--image-column", default="image", help="parquet: column of image bytes (default image)")
    src.add_argument("--caption-column", default="caption", help="parquet: caption column (default caption)")
    src.add_argument("--key-column", help="parquet: id column (default: <file stem>-<row>)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="data set folder (several resolutions: OUT/<R>/)")
    out.add_argument("--resolution", type=int, nargs="+", default=[256], help="stored resolution(s) in pixels")
    out.add_argument("--samples-per-shard", type=int, default=1024,
                     help="at the lowest resolution; higher ones hold about as many bytes per shard")
    out.add_argument("--compression", default="blosc-lz4", choices=[c or "none" for c in COMPRESSIONS],
                     help="blosc-lz4 (default) decodes ~10x faster than lzf/gzip; see harness.data.writer")
    out.add_argument("--overwrite", action="store_true", help="replace existing data sets")
    flt = parser.add_argument_group("filters")
    flt.add_argument("--upsample", action="store_true",
                     help="store sources smaller than a resolution upsampled (default: skip them)")
    flt.add_argument("--min-aspect", type=float, default=0.5, help="lowest width/height kept (default 0.5)")
    flt.add_argument("--max-aspect", type=float, default=2.0, help="highest width/height kept (default 2)")
    flt.add_argument("--max-caption-chars", type=int, default=1000, help="longer captions are skipped")
    flt.add_argument("--strict", action="store_true", help="a missing or undecodable image is an error, not a skip")
    flt.add_argument("--tokenizer", help="SentencePiece .model or Hugging Face tokenizer: count the caption "
                                         "characters it maps to its unknown token")
    flt.add_argument("--examples", type=int, default=20, help="places listed per reason in the report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if bool(args.input) == bool(args.images_root or args.captions) or bool(args.images_root) != bool(args.captions):
        parser.error("give --input GLOB..., or --images-root with --captions")
    return args


def main(argv: list[str] | None = None) -> Result:
    args = parse_args(argv)
    comm = mpi_comm()
    rank, size = rank_and_size(comm)
    resolutions = tuple(sorted(set(args.resolution)))
    if args.input:
        units = input_units(args.input, image_column=args.image_column, caption_column=args.caption_column,
                            key_column=args.key_column)
        source = " ".join(args.input)
    else:
        units = folder_units(args.images_root, args.captions, args.split, args.samples_per_shard)
        source = f"{args.captions}" + (f" split={args.split}" if args.split else "")
    policy = Policy(resolutions, upsample=args.upsample, min_aspect=args.min_aspect, max_aspect=args.max_aspect,
                    max_caption_chars=args.max_caption_chars, strict=args.strict)
    options = Options(policy, samples_per_shard=args.samples_per_shard,
                      compression=None if args.compression == "none" else args.compression,
                      tokenizer=args.tokenizer, examples=args.examples, overwrite=args.overwrite)
    start = time.perf_counter()
    result = ingest(units, args.out, options, source=source, comm=comm, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    if rank == 0:
        report = result.report
        print(f"{report['records']} records from {len(units)} input shard(s) on {size} rank(s) in {seconds:.1f} s: "
              f"{report['records'] / seconds:.1f} images/s")
        for r, manifest in result.manifests.items():
            mb = sum((result.folders[r] / s.file).stat().st_size for s in manifest.shards) / 1e6
            print(f"{result.folders[r]}: {manifest.num_samples} samples at {r} px in {len(manifest.shards)} shards, "
                  f"{mb:.1f} MB ({args.compression})")
        skipped = ", ".join(f"{k} {v['count']}" for k, v in report["skipped"].items())
        print(f"skipped: {skipped or 'none'}; report: {result.report_path}")
    return result


def cli() -> None:
    """The console script `harness-make-shards` (setup.cfg) and `python tools/make_shards.py`."""
    try:
        main()
    except (OSError, ValueError) as e:  # bad input or a corrupt file: one line naming it, no traceback
        sys.exit(f"make_shards: error: {e}" if rank_and_size(mpi_comm())[0] == 0 else 1)


if __name__ == "__main__":
    cli()
