"""One command for the comparison tables: ``python -m benchmarks.compare --device cpu|cuda``.

For each op (bench_policy_loss.py, bench_token_stats.py, bench_linear.py) and each variant that can
run here — naive torch, torch.compile of it, our backends, peers — at the size set's main points
and across a vocabulary sweep and a token sweep, it measures time, peak extra memory and agreement
with naive (harness.py), and reports effective bandwidth (the op's minimal bytes over the time) and
its share of the device-copy bandwidth measured in the same run, matmul TFLOP/s and the share of a
large matmul for the linear ops, and speed-ups vs naive and vs the best peer (report.py).

It prints one table per op and size, the sweep tables and the SPEC section 7 targets (targets.py);
writes ``results_<device>_<sizes>.json`` (runner.py), ``results_<device>_<sizes>.md`` and
``<op>_<device>_<sizes>.png`` (time and memory against vocabulary size and token count) into
``--out`` (default benchmarks/out/). A wall-clock budget (``--budget-s``) keeps the run bounded:
work left when it runs out is listed as skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from . import registry, report
from .inputs import SIZES
from .runner import Runner
from .targets import targets

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", choices=tuple(SIZES), default=None,
                        help="size set (default: cpu on --device cpu, gpu on --device cuda)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default benchmarks/out/)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget in seconds (default: the size set's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--ops", default=None, help="comma-separated subset of " + ",".join(registry.OPS))
    parser.add_argument("--targets-only", action="store_true",
                        help="CPU: only the SPEC section 7 targets beside their ceilings (benchmarks/ceilings.py)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sizes_name = args.sizes or ("gpu" if args.device == "cuda" else "cpu")
    ops = registry.available_ops()
    if args.ops:
        unknown = set(args.ops.split(",")) - set(registry.OPS)
        if unknown:
            parser.error(f"unknown ops: {sorted(unknown)}")
        ops = [name for name in ops if name in args.ops.split(",")]
    device = torch.device(args.device)
    runner = Runner(device, sizes_name, args.out, args.budget_s or SIZES[sizes_name].budget_s, not args.no_compile)
    if args.targets_only:
        runner.measure_targets()
        runner.finish()
        meta = runner.meta
        print(f"{meta['device_name']}; commit {meta['commit']}; load average {meta['load_average_start']:.1f} "
              f"at the start, {meta['load_average_end']:.1f} at the end ({meta['elapsed_s']:.0f} s)")
        lines = targets([], meta)
        print("\n".join(lines))
        print(f"targets met: {sum(line.startswith('- met') for line in lines)} of {len(lines)}")
        return 0
    runner.run(ops)
    rows = list(runner.rows.values())
    report.enrich(rows, runner.meta)
    runner.finish()
    text = report.report(rows, runner.meta)
    markdown = args.out / f"results_{device.type}_{sizes_name}.md"
    markdown.write_text(text)
    written = report.plot(rows, runner.meta, args.out)
    print()
    print(text)
    target_lines = targets(rows, runner.meta)
    if target_lines:
        print(f"targets met: {sum(line.startswith('- met') for line in target_lines)} of {len(target_lines)}")
    print(f"wrote {runner.json_path}, {markdown}" + "".join(f", {path}" for path in written)
          + f" in {runner.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
