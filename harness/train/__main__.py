"""`harness-train --config FILE [key=value ...]` (also `python -m harness.train`)."""

from __future__ import annotations

import argparse
import sys
import warnings

from harness.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness-train", description=__doc__)
    parser.add_argument("--config", help="YAML run config (configs/...)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 parallel.tp=2")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Megatron-core 0.16 calls torch.distributed APIs that torch 2.13 deprecates, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"megatron")
    from harness.train.loop import (
        train,  # heavy imports only after the config is known to be good
    )
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
