"""`harness-train --config FILE [key=value ...]` (also `python -m harness.train`).

Exit status: 0 the stage is complete; 2 a bad config (one line, before anything starts); 3 the
stage stopped before its end (a signal, or its time limit without train.time_limit_completes):
run the same command again to resume; 1 an error, printed as one line per rank that names the
file, key, step or rank (under mpiexec/srun the whole MPI world is then aborted).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from harness import warnings_filter
from harness.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    warnings_filter.install()     # before Megatron is imported: some of its warnings come at import
    parser = argparse.ArgumentParser(prog="harness-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/...)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 parallel.tp=2")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Heavy imports only after the config is known to be good.
    import torch.distributed as dist

    from harness.checkpoint.io import CheckpointError
    from harness.checkpoint.rundir import RunDirLocked
    from harness.distributed.failures import fail
    from harness.distributed.launch import LaunchError, detect
    from harness.train.loop import TrainingError, train
    from harness.train.stopping import EXIT_STOPPED

    try:
        outcome = train(cfg)
    except Exception as e:  # noqa: BLE001 - every rank reports, and an MPI world is aborted
        expected = (ConfigError, CheckpointError, RunDirLocked, TrainingError, LaunchError, OSError)
        if not isinstance(e, expected):
            traceback.print_exc()
        fail(e, detect(), dist.get_rank() if dist.is_initialized() else 0)
        return 1
    return 0 if outcome.complete else EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
