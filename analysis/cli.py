"""``kfac-bench analyze RUNS_DIR [--out DIR] [--metric iqm|mean|median] [--bootstrap N] [--seed S]``.

Dispatched from :mod:`kfac_bench.cli` (``add_arguments`` / ``run``). A missing or empty runs
directory raises FileNotFoundError / ValueError with a one-line message, which the top-level CLI
prints as ``kfac-bench: error: ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``analyze`` options on ``parser``."""
    parser.add_argument("runs_dir", metavar="RUNS_DIR", type=Path, help="a sweep directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: RUNS_DIR/report)"
    )
    parser.add_argument(
        "--metric",
        choices=("iqm", "mean", "median"),
        default="iqm",
        help="across-seed statistic for curves and the headline aggregate (default: iqm)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="N",
        help="bootstrap resamples per confidence interval (default: 2000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="bootstrap seed (default: 0)"
    )


def run(args: argparse.Namespace) -> int:
    """Analyse ``args.runs_dir``; print progress lines and the report path. Returns 0."""
    from analysis.report import analyze

    if args.bootstrap < 1:
        raise ValueError("--bootstrap must be >= 1")
    report = analyze(
        args.runs_dir,
        out=args.out,
        metric=args.metric,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        log=lambda message: print(message, flush=True),
    )
    print(f"report: {report}")
    print(f"html:   {report.with_suffix('.html')}")
    return 0
