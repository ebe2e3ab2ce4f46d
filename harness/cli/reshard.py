"""Convert a checkpoint to another (TP, PP, DP) layout, or to / from one safetensors release file.

    torchrun --nproc_per_node 4 tools/reshard.py --source runs/x --out runs/x-tp2pp2 parallel.tp=2 parallel.pp=2 --verify
    python tools/reshard.py --source runs/x --export release/x.safetensors [--raw]
    python tools/reshard.py --import release/x.safetensors --out runs/x-imported

A layout conversion keeps the whole training state (weights, EMA, the distributed optimizer's state,
the schedule, the data position), so training resumes from the result at its layout. When every
override is a layout key (parallel.tp, parallel.pp, micro_batch, recompute, ...) the stored tensors
do not change: the files are copied, in one process (no launcher needed), at copy speed. Other
overrides load the state into the stages of the target layout and write it again (launch with the
target's world size). --verify loads the source and the result in the target layout (under a
launcher of its world size) and checks that the weights are identical and the outputs on a fixed
batch equal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch.distributed as dist

from harness.checkpoint import io
from harness.checkpoint.reshard import (
    export_safetensors,
    import_safetensors,
    layout_only,
    load_stage,
    relayout,
    verify,
)
from harness.checkpoint.rundir import RunDirLocked
from harness.config import ConfigError, from_dict
from harness.distributed.launch import init_distributed
from harness.parallel.layout import initialize_layout
from harness.train.start import from_rank0, hold_run_dir


def _layout_for(meta_config: dict, overrides: list[str], source: str):
    cfg = from_dict(meta_config, source, overrides)
    return initialize_layout(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed, cfg.parallel.timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="checkpoint or run directory to convert or export")
    what.add_argument("--import", dest="import_file", help="safetensors release file to turn into a checkpoint")
    parser.add_argument("--out", help="run directory to write the converted / imported checkpoint into")
    parser.add_argument("--export", help="write one safetensors file instead of a checkpoint")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    parser.add_argument("--verify", action="store_true", help="load source and result; compare weights and outputs")
    parser.add_argument("overrides", nargs="*", help="target layout etc., e.g. parallel.tp=2 parallel.pp=2")
    args = parser.parse_args(argv)
    init_distributed()
    lock = None
    try:
        if args.import_file:
            layout = initialize_layout(1, 1)
            lock = hold_run_dir(Path(args.out), layout.rank)
            path = import_safetensors(Path(args.import_file), Path(args.out), layout, args.overrides)
            print(f"wrote {path}")
            return 0
        source = io.resolve(args.source)
        if args.export:
            start = time.perf_counter()
            out = export_safetensors(source, Path(args.export), use_ema=not args.raw)
            print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.2f} s")
            return 0
        if not args.out:
            parser.error("--out is required to convert a checkpoint")
        meta = io.read_meta(source)
        copying = layout_only(args.overrides)
        if copying:
            rank = dist.get_rank()
            lock = hold_run_dir(Path(args.out), rank)
            start = time.perf_counter()
            problem = None
            if rank == 0:
                try:
                    relayout(source, Path(args.out), args.overrides)
                except (ConfigError, io.CheckpointError, ValueError, OSError) as e:
                    problem = str(e)
            if problem := from_rank0(problem):
                raise ValueError(problem)
            result = Path(args.out) / io.checkpoint_name(meta["step"])
            if rank == 0:
                p = io.read_meta(result)["config"]["parallel"]
                _report(result, source, f"tp={p['tp']} pp={p['pp']}, files copied", time.perf_counter() - start)
        else:
            layout = _layout_for(meta["config"], args.overrides, str(source / "meta.json"))
            lock = hold_run_dir(Path(args.out), layout.rank)
            start = time.perf_counter()
            stage, state = load_stage(source, layout, args.overrides)
            result = stage.save(Path(args.out), state)
            if layout.rank == 0:
                _report(result, source, f"tp={layout.tp} pp={layout.pp} dp={layout.dp}, state rewritten",
                        time.perf_counter() - start)
        if args.verify:
            if copying:
                layout = _layout_for(meta["config"], args.overrides, str(source / "meta.json"))
            verify(source, result, layout, args.overrides)
    except (ConfigError, io.CheckpointError, RunDirLocked, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
    return 0


def _report(result: Path, source: Path, how: str, seconds: float) -> None:
    size = io.size_bytes(source)
    print(f"wrote {result} ({how}) from {source} ({size / 1e6:.1f} MB) in {seconds:.2f} s: {size / 1e6 / seconds:.0f} MB/s")


def cli() -> None:
    """The console script `harness-reshard` (setup.cfg) and `python tools/reshard.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
