"""Side-by-side table of run groups from their ``episodes.csv`` files (kfac-bench or peer runs).

    .venv/bin/python scripts/compare_controls.py "kfac-bench a2c=runs/ours/a2c__CartPole-v1__s*" \
        "SB3 A2C=runs/peers/sb3-a2c__CartPole-v1__s*" --threshold 475

Per group (one row): seeds, median [min, max] final score (mean return of the episodes that end
in the last 10% of the run's steps, as ``analysis`` defines it), how many seeds reach the
threshold with a 20-episode trailing mean, and the median env step and wall-clock second at which
they do (over the seeds that reach it), plus the median env steps/s over the whole run.
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import pandas as pd


def final_score(ep: pd.DataFrame, total_steps: float) -> float:
    tail = ep[ep["step"] >= 0.9 * total_steps]
    return float(tail["return"].mean()) if len(tail) else float("nan")


def first_reach(ep: pd.DataFrame, threshold: float, column: str) -> float:
    smooth = ep["return"].rolling(20, min_periods=20).mean()
    hit = ep.loc[smooth >= threshold, column]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def summarise(label: str, pattern: str, threshold: float | None) -> list[str]:
    rows = []
    for run in sorted(glob.glob(pattern)):
        ep = pd.read_csv(f"{run}/episodes.csv")
        total = float(ep["step"].max())
        rows.append(
            {
                "final": final_score(ep, total),
                "step": first_reach(ep, threshold, "step") if threshold else np.nan,
                "wall": first_reach(ep, threshold, "wall_time") if threshold else np.nan,
                "fps": total / float(ep["wall_time"].max()),
            }
        )
    df = pd.DataFrame(rows)
    reached = df["step"].notna()
    cells = [
        label,
        str(len(df)),
        f"{df['final'].median():.1f} [{df['final'].min():.1f}, {df['final'].max():.1f}]",
    ]
    if threshold:
        cells += [
            f"{int(reached.sum())}/{len(df)}",
            f"{df.loc[reached, 'step'].median():,.0f}" if reached.any() else "–",
            f"{df.loc[reached, 'wall'].median():.1f}" if reached.any() else "–",
        ]
    cells.append(f"{df['fps'].median():,.0f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", help="LABEL=GLOB of run directories")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args()
    header = ["group", "seeds", "final score, median [min, max]"]
    if args.threshold:
        header += [f"reach {args.threshold:g}", "median step", "median wall s"]
    header.append("env steps/s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for group in args.groups:
        label, pattern = group.split("=", 1)
        print("| " + " | ".join(summarise(label, pattern, args.threshold)) + " |")


if __name__ == "__main__":
    main()
