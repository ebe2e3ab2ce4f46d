"""Pre-flight check of a stage before a job starts its ranks (slurm/*.sbatch run it first).

    python tools/check_config.py --config configs/tiny/core.yaml --world-size 8 [key=value ...]
    python tools/check_config.py --config configs/tiny/grow-frozen.yaml --source runs/tiny/core
    python tools/check_config.py --config configs/tiny/core.yaml --finished      # after the run
    python tools/check_config.py --config configs/cluster/core-8b.yaml --skip-paths   # away from the cluster

Checks, without importing torch: the config loads and validates, its layout fits the world size,
train.run_dir can be created and written, the data set exists and is stored at a resolution the
model can read (at or above model.resolution_px, a multiple of it), a text encoder given as a folder
(model.text_encoder_path) exists, and where the stage starts from
(`--source` for tools/grow.py, else run_dir's `latest` or train.init_from) exists. `--skip-paths`
leaves out the checks of paths (run_dir, data, source), for checking a cluster's configs elsewhere.
Prints one line and exits 0, or prints `error: ...` (one line) and exits 2.

`--finished` instead asks whether the stage is done: its latest checkpoint says it is complete
(train.steps reached, or its time limit with train.time_limit_completes). A run stopped by SIGTERM,
by USR1 when the requeue failed, or by its time limit otherwise, is not: exit 3, so that jobs
waiting on it with afterok do not start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.checkpoint.rundir import unwritable_reason
from harness.config import ConfigError, load, validate_world


def check(config: str, overrides: list[str], world_size: int | None, source: str | None,
          skip_paths: bool = False) -> str:
    """The one-line summary of a stage that can start; raises ConfigError naming the first problem."""
    cfg = load(config, overrides)
    dp = validate_world(cfg, world_size) if world_size else None
    run_dir = Path(cfg.train.run_dir)
    layout = f"tp={cfg.parallel.tp} pp={cfg.parallel.pp}" + (f" dp={dp}" if dp else "")
    summary = (f"{config}: stage {cfg.train.stage}, {cfg.model.size} {cfg.model.arch} {cfg.model.resolution_px} px, "
               f"{layout}, run_dir {run_dir}")
    if skip_paths:
        return f"{summary}, paths not checked"
    if (why := unwritable_reason(run_dir)) is not None:
        raise ConfigError(f"train.run_dir {run_dir}: not writable ({why})")
    for key in ("path", "heldout_path"):
        _check_data(Path(getattr(cfg.data, key)), f"data.{key}", cfg.model.resolution_px)
    encoder = cfg.model.text_encoder_path          # a folder; a hub name is looked up when the run starts
    if cfg.model.text_encoder == "hf" and encoder.startswith(("/", ".", "~")) \
            and not Path(encoder).expanduser().is_dir():
        raise ConfigError(f"model.text_encoder_path {encoder}: no such folder")
    if source is not None:
        if not Path(source).exists():
            raise ConfigError(f"--source {source}: no such checkpoint or run directory")
        start = f"grows from {source}"
    elif (run_dir / "latest").is_file():
        start = f"resumes from {run_dir / (run_dir / 'latest').read_text().strip()}"
    elif cfg.train.init_from:
        if not Path(cfg.train.init_from).exists():
            raise ConfigError(f"train.init_from {cfg.train.init_from}: no such checkpoint or run directory")
        start = f"starts from {cfg.train.init_from}"
    else:
        start = "starts from scratch"
    return f"{summary}, {start}"


def _check_data(path: Path, key: str, resolution_px: int) -> None:
    """The data set exists and the model's resolution divides the stored one (the reader's rule)."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"{key} {path}: no data set there (no manifest.json)")
    try:
        stored = json.loads(manifest.read_text())["resolution_px"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{manifest}: not a data-set manifest ({e!r})") from None
    if not isinstance(stored, int) or stored < resolution_px or stored % resolution_px:
        raise ConfigError(f"{key} {path}: stored at {stored} px, which model.resolution_px {resolution_px} "
                          "does not divide (store the set at or above the stage's resolution)")


def finished(config: str, overrides: list[str]) -> str:
    """The one-line summary of a finished stage; raises ConfigError if it stopped before its end."""
    cfg = load(config, overrides)
    latest = Path(cfg.train.run_dir) / "latest"
    meta = json.loads((latest.parent / latest.read_text().strip() / "meta.json").read_text()) \
        if latest.is_file() else {"step": 0}
    step = meta["step"]
    if not meta.get("complete", False):
        raise ConfigError(f"{cfg.train.run_dir}: stopped at step {step} of {cfg.train.steps}; "
                          "submit the same job again to resume")
    return f"{cfg.train.run_dir}: stage {cfg.train.stage} finished at step {step}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("SLURM_NTASKS", "0")) or None,
                        help="ranks the stage will run on (default: SLURM_NTASKS when set)")
    parser.add_argument("--source", help="the checkpoint or run directory tools/grow.py will read")
    parser.add_argument("--finished", action="store_true", help="after the run: did it reach train.steps?")
    parser.add_argument("--skip-paths", action="store_true",
                        help="check the config and layout only, not run_dir, data or source (away from the cluster)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.finished:
            print(finished(args.config, args.overrides), flush=True)
        else:
            print(f"check: {check(args.config, args.overrides, args.world_size, args.source, args.skip_paths)}", flush=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 3 if args.finished else 2
    return 0


def cli() -> None:
    """The console script `harness-check-config` (setup.cfg) and `python tools/check_config.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
