"""ACKTR's env-steps/s against the A2C control's along whole runs, window by window.

The trainer benchmark (``tests/benchmarks/test_bench_trainer.py``) times the second half of
51 200-step runs; K-FAC's cost grows as training goes on (the kept-eigenvector preconditioning
and the dead-unit eigh get dearer as the factors fill in), so this script runs one A2C run and
one K-FAC run of the full length per pair, and reports env-steps/s per window of env steps from
each run's updates.csv (``step``, ``wall_time``, one row every ``log.update_every`` updates)::

    python scripts/ratio_along_run.py --env MinAtar/Breakout-v1 --preset minatar-tuned \
        --steps 400000 --window 50000 --pairs 2

The runs are written to a temporary directory and removed afterwards. Runs within a pair are
sequential, not interleaved: compare pairs with each other to see the noise.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from kfac_bench.domains import ConfigError
from kfac_bench.presets import build_config
from kfac_bench.rl.env_registry import check_env_id
from kfac_bench.rl.trainer import Trainer
from kfac_bench.rl.vec_env import EnvError


def window_rates(run_dir: Path, steps: int, window: int) -> list[float]:
    """Env steps/s within each [k·window, (k+1)·window] of env steps, between the first and the
    last updates.csv row inside it."""
    with open(run_dir / "updates.csv", newline="") as f:
        marks = [(float(r["step"]), float(r["wall_time"])) for r in csv.DictReader(f)]
    rates = []
    for low in range(0, steps, window):
        inside = [m for m in marks if low <= m[0] <= low + window]
        if len(inside) >= 2:
            (s0, t0), (s1, t1) = inside[0], inside[-1]
            rates.append((s1 - s0) / (t1 - t0))
    return rates


def run(env: str, preset: str, steps: int, window: int, root: Path) -> list[float]:
    run_dir = root / preset
    run_dir.mkdir()
    result = Trainer(build_config(env, preset=preset, total_steps=steps), run_dir).run()
    if result.state != "done":
        raise SystemExit(f"ratio_along_run: the {preset} run ended {result.state}: {result}")
    return window_rates(run_dir, steps, window)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--preset", default="minatar-tuned", help="the K-FAC run's preset")
    parser.add_argument("--steps", type=int, default=400_000)
    parser.add_argument("--window", type=int, default=50_000, help="env steps per window")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.window <= 0 or args.pairs <= 0:
        parser.error("--steps, --window and --pairs must be positive")
    try:
        check_env_id(args.env)
        build_config(args.env, preset=args.preset, total_steps=args.steps)
    except (ConfigError, EnvError) as error:
        sys.exit(f"ratio_along_run: {error}")
    lows = range(0, args.steps, args.window)
    print(
        "window (k steps): " + " ".join(f"{lo // 1000}-{(lo + args.window) // 1000}" for lo in lows)
    )
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            a2c = run(args.env, "a2c", args.steps, args.window, Path(tmp))
            kfac = run(args.env, args.preset, args.steps, args.window, Path(tmp))
        ratios = " ".join(f"{k / a:.2f}" for a, k in zip(a2c, kfac))
        print(f"pair {pair + 1}: ratio {ratios}", flush=True)
        print(f"  a2c env-steps/s  {' '.join(f'{a:.0f}' for a in a2c)}")
        print(f"  {args.preset} env-steps/s {' '.join(f'{k:.0f}' for k in kfac)}")


if __name__ == "__main__":
    main()
