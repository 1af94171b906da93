"""The ``fastmtl`` command line.

``fastmtl bench [--ops box_iou ...] [--device cpu|cuda|all] [--quick] [--out DIR]`` times the
registered op families against their alternatives, prints a table per device and writes CSV
and JSON results. Exit status: 0 on success, 1 when providers disagree, 2 on a usage error.
"""

import argparse
import logging
import platform
import sys
import warnings
from typing import Optional

import torch

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from fastmtl.bench import REGISTRY

    parser = argparse.ArgumentParser(prog="fastmtl", description="fastmtl command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench", help="time fastmtl ops against torchvision, eager PyTorch and torch.compile"
    )
    ops = sorted(REGISTRY)
    bench.add_argument("--ops", nargs="+", choices=ops, default=ops, help="op families (default: all)")
    bench.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="'all' (default): the CPU, and CUDA when available",
    )
    bench.add_argument(
        "--quick", action="store_true", help="small sizes, short budgets, no torch.compile (a smoke test)"
    )
    out_help = "results directory (default: benchmarks/results/ of a checkout, else ./fastmtl-bench-results)"
    bench.add_argument("--out", default=None, help=out_help)
    bench.add_argument("--budget", type=float, default=None, help="seconds of timed calls per provider")
    return parser


def _timing(quick: bool, budget: Optional[float]):
    from fastmtl.bench.harness import Timing

    if quick:
        return Timing(budget_s=budget or 0.02, warmup_s=0.0, min_repeats=3, max_repeats=20)
    return Timing(budget_s=budget or 1.0)


def _quiet_compile() -> None:
    # torch.compile of torchvision's losses graph-breaks on their boolean-mask indexing and
    # logs warnings plus an anomaly-mode traceback each time; they would bury the table.
    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    warnings.filterwarnings("ignore", message="Error detected in IndexPutBackward0", category=UserWarning)


def _bench_device(args, device: str, timing, info: dict) -> tuple:
    """Runs every case on one device; returns (rows, notes, disagreement messages)."""
    from fastmtl.bench import load_cases
    from fastmtl.bench.harness import AgreementError, run_case

    cases = [c for op in args.ops for c in load_cases(op, device, args.quick)]
    rows, notes, failures = [], [], []
    for i, case in enumerate(cases, 1):
        label = f"{case.op} {case.pass_} {str(case.dtype).replace('torch.', '')} {case.size}"
        print(f"[{i}/{len(cases)}] {device}: {label}", file=sys.stderr, flush=True)
        try:
            rows += run_case(case, timing, info, notes)
        except AgreementError as e:  # keep going: the other cases are still worth timing
            print(f"error: {e}", file=sys.stderr)
            failures.append(str(e))
    return rows, notes, failures


def _bench(args) -> int:
    from fastmtl.bench.harness import (
        default_out_dir,
        format_extras,
        format_table,
        machine_info,
        write_results,
    )

    if args.device == "cuda" and not torch.cuda.is_available():
        print("fastmtl bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    _quiet_compile()
    timing = _timing(args.quick, args.budget)
    out_dir = args.out or default_out_dir()
    failed = False
    for device in devices:
        info = machine_info(device)
        rows, notes, failures = _bench_device(args, device, timing, info)
        failed |= bool(failures)
        print(
            f"\n{info['device_name']} ({device}, {info['threads']} threads), torch {info['torch']}, "
            f"fastmtl {info['fastmtl']} ({info['git_rev']}); median ms, (fastmtl's speedup)"
        )
        print(format_table(rows))
        for line in format_extras(rows):
            print(line)
        for line in notes + [f"DISAGREE: {f}" for f in failures]:
            print("note:", line)
        if rows:
            meta = {
                "args": vars(args),
                "timing": vars(timing),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "notes": notes,
                "failures": failures,
            }
            csv_path, json_path = write_results(rows, out_dir, device, meta)
            print(f"wrote {csv_path} and {json_path}")
    return 1 if failed else 0


def main(argv: Optional[list] = None) -> int:
    """Entry point of the ``fastmtl`` console script and of ``python -m fastmtl``."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    return 2
