"""Summarise tools/gpu_check.sh's outputs: gpu_check.json and a BENCHMARKS.md section (gpu_check.md).

    python tools/gpu_report.py OUT_DIR --tests-rc N --bench-rc N
"""

from __future__ import annotations

import argparse
import datetime
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def test_outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped: reason, from pytest's JUnit XML (our own file)."""
    if not junit.is_file():
        return {}
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        skipped = case.find("skipped")
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[name] = ("failed" if failed else
                          f"skipped: {skipped.get('message')}" if skipped is not None else "passed")
    return outcomes


def markdown(bench: dict, outcomes: dict[str, str], date: str) -> str:
    env = bench.get("environment", {})
    lines = [f"### GPU check ({date}): {env.get('gpu', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
             f"NCCL {env.get('nccl', '?')}", "", "Command: `bash tools/gpu_check.sh` (one GPU).", ""]
    peak = bench.get("matmul_tflops", {}).get("bf16")
    if peak:
        lines += [f"Measured bf16 matmul rate (8192^3): {peak:.1f} TFLOP/s.", "",
                  "| case | rate | TFLOP/s | MFU (of the measured bf16 matmul rate) |", "|---|---|---|---|"]
        for r in bench.get("results", []):
            rate = f"{r['images_per_s']:.0f} img/s" if "images_per_s" in r else f"{r['tokens_per_s']:.0f} tok/s"
            lines.append(f"| {r['what']} | {rate} | {r['tflops']:.1f} | {100 * r['fraction_of_matmul']:.0f}% |")
    counts = {k: sum(v.startswith(k) for v in outcomes.values()) for k in ("passed", "failed", "skipped")}
    lines += ["", f"Tests (gpu tier + stage boundaries on the GPU): {counts['passed']} passed, "
              f"{counts['failed']} failed, {counts['skipped']} skipped."]
    lines += [f"- {name}: {outcome}" for name, outcome in outcomes.items() if not outcome.startswith("passed")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tests-rc", type=int, required=True)
    parser.add_argument("--bench-rc", type=int, required=True)
    args = parser.parse_args(argv)
    bench_file = args.out_dir / "bench_gpu.json"
    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
    outcomes = test_outcomes(args.out_dir / "gpu_tests.xml")
    date = datetime.date.today().isoformat()
    summary = {"date": date, "tests_rc": args.tests_rc, "bench_rc": args.bench_rc, "tests": outcomes, **bench}
    (args.out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    (args.out_dir / "gpu_check.md").write_text(markdown(bench, outcomes, date))
    print((args.out_dir / "gpu_check.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
