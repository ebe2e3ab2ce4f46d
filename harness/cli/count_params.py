"""Parameter counts of every model size, built on the meta device (no memory, no compute).

    python tools/count_params.py [--resolution 1024]

For each size: the Shallow-UViT (core pre-training, 64 px) and the model grown to --resolution,
split into the text/time conditioning, the core's transformer layers, the rest of the core and the
convolutional levels.
"""

from __future__ import annotations

import argparse

import torch

from harness.config import ModelConfig
from harness.config.sizes import MODEL_SIZES
from harness.distributed.launch import init_distributed
from harness.model.uvit import build_model
from harness.parallel.layout import initialize_layout
from harness.parallel.plan import GROUPS, breakdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=1024, help="resolution of the grown model")
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args(argv)
    init_distributed()
    initialize_layout(1, 1)
    print(f"{'size':<6} {'model':<16} " + " ".join(f"{g:>14}" for g, _ in GROUPS) + f" {'total':>16}")
    for size in MODEL_SIZES:
        for arch, res in (("shallow", 64), ("grown", args.resolution)):
            with torch.device("meta"):
                model = build_model(ModelConfig(size=size, arch=arch, resolution_px=res),
                                    vocab_size=args.vocab_size, text_dim=None, seed=0, initialize=False)
            c = breakdown(model)
            print(f"{size:<6} {f'{arch} {res}px':<16} " + " ".join(f"{c[g]:>14,}" for g, _ in GROUPS)
                  + f" {c['total']:>16,}")
    return 0


def cli() -> None:
    """The console script `harness-count-params` (setup.cfg) and `python tools/count_params.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
