"""Describe a checkpoint without loading its weights: stage, step, layout, data position, parameters
per module, the frozen set, the lineage.

    python tools/inspect_ckpt.py runs/demo/grow-frozen           # a run directory (its latest) or a checkpoint
    python tools/inspect_ckpt.py runs/demo/grow-frozen --verify  # also read every tensor back; exit 1 if any fails

Nothing in the checkpoint is unpickled beyond checkpoint metadata (harness/checkpoint/safe_pickle.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

from harness.checkpoint import io


def _module(name: str) -> str:
    """Group: core.layers.<i>, the single-block modules (stem, mid, head) whole, else two name parts."""
    parts = name.split(".")
    if parts[0] in ("stem", "mid", "head"):
        return parts[0]
    return ".".join(parts[:3] if parts[:2] == ["core", "layers"] else parts[:2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="checkpoint directory, or a run directory (its latest checkpoint)")
    parser.add_argument("--layers", action="store_true", help="list every core layer instead of summing them")
    parser.add_argument("--verify", action="store_true", help="read every tensor back; exit 1 naming each bad file")
    args = parser.parse_args(argv)
    try:
        ckpt = io.resolve(args.path)
        meta = io.read_meta(ckpt)
        shapes = io.stored_shapes(ckpt)
    except io.CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    if args.verify:
        problems = io.verify(ckpt, tensors=True)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if problems:
            return 1
        print(f"verified {ckpt}: every file present and every one of {len(shapes)} tensors read back")
    cfg = meta["config"]
    frozen = set(meta.get("frozen", []))
    print(f"checkpoint   {ckpt}")
    print(f"stage        {meta['stage']}   step {meta['step']}   saved {meta.get('saved_at', '?')}")
    print(f"model        {cfg['model']['size']} {cfg['model']['arch']} {cfg['model']['resolution_px']} px, "
          f"precision {meta.get('precision', cfg['train']['precision'])}")
    print("layout       " + "  ".join(f"{k}={v}" for k, v in meta["layout"].items()) + "   (loads at any layout)")
    print(f"data         {meta['consumed_samples']:,} samples consumed of {cfg['data']['path']} (seed {cfg['data']['seed']})")
    print("versions     " + "  ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()))

    per_module: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, shape in shapes.items():
        if name.startswith("model."):
            key = name.removeprefix("model.")
            module = _module(key) if args.layers or not key.startswith("core.layers.") else "core.layers.*"
            per_module[module][0] += math.prod(shape)
            per_module[module][1] += math.prod(shape) if key in frozen else 0
    total = sum(n for n, _ in per_module.values())
    print(f"\nparameters   {total:,} ({sum(f for _, f in per_module.values()):,} frozen)")
    for module, (n, f) in sorted(per_module.items()):
        print(f"  {module:<28} {n:>14,}" + ("   frozen" if f == n and n else f"   {f:,} frozen" if f else ""))
    families = Counter(k.split(".")[0] for k in shapes)
    print("stored       " + "  ".join(f"{fam}: {n} tensors" for fam, n in sorted(families.items())))
    files = [f.name for f in Path(ckpt).iterdir() if not f.name.startswith(("__", "."))]
    print(f"files        {', '.join(sorted(files))}")

    print("\nlineage" + ("      (trained from scratch)" if not meta.get("lineage") else ""))
    for i, entry in enumerate(meta.get("lineage", [])):
        dropped = entry.get("dropped")
        extra = f", dropped {len(dropped)} tensors ({', '.join(sorted({d.split('.')[0] for d in dropped}))})" if dropped else ""
        what = entry.get("imported") or entry.get("checkpoint")
        print(f"  {i}. {what} (stage {entry.get('stage', '?')}, step {entry.get('step', '?')}{extra})")
    return 0


def cli() -> None:
    """The console script `harness-inspect-ckpt` (setup.cfg) and `python tools/inspect_ckpt.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
