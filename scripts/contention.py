"""One training run alone, then the same run beside CPU-bound processes: env-steps/s and phases.

    .venv/bin/python scripts/contention.py --env BreakoutNoFrameskip-v4 --preset atari-tuned \
        --steps 12800 --hogs 1 [--set torch_threads=1 ...]

Each run is ``kfac-bench train`` in a fresh directory with ``log.update_every = 1``; its speed is
the median ``fps`` of the second half of its updates.csv rows (past the cold start and the first
decompositions), and the phase columns (``time_*``, kfac_bench/timing.py) are summed over the same
rows. The hogs are ``python -c "while True: pass"`` processes started just before the contended
run and killed after it. The ratio contended/solo is what issue 16 asks to stay ≥ 0.4 with one
hog. Run it on an otherwise idle machine: anything else running is a hog it does not count.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KFAC_BENCH = ROOT / ".venv" / "bin" / "kfac-bench"
PHASES = ("act", "env", "update", "fisher", "stats", "inverse", "precondition")


def train(out: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [str(KFAC_BENCH), "train", "--env", args.env, "--steps", str(args.steps)]
    command += ["--out", str(out), "--no-progress", "--set", "log.update_every=1"]
    if args.preset:
        command += ["--preset", args.preset]
    for item in args.set:
        command += ["--set", item]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader((out / "updates.csv").open()))
    second_half = rows[len(rows) // 2 :]
    result = {"fps": statistics.median(float(r["fps"]) for r in second_half)}
    for phase in PHASES:
        values = [float(r[f"time_{phase}"] or 0) for r in second_half]
        result[phase] = sum(values) / len(values)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--steps", type=int, default=12800)
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes beside the run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        solo = train(Path(tmp) / "solo", args)
        hogs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)
        ]
        try:
            contended = train(Path(tmp) / "contended", args)
        finally:
            for hog in hogs:
                hog.kill()
    print(f"{args.env} {args.preset or '(family default)'} {' '.join(args.set)}")
    print("per update (s): " + ", ".join(PHASES))
    for label, result in (("solo", solo), (f"{args.hogs} hog(s)", contended)):
        phases = " ".join(f"{result[p]:.2f}" for p in PHASES)
        print(f"  {label:>10}: {result['fps']:7.1f} env-steps/s | {phases}")
    print(f"ratio contended/solo: {contended['fps'] / solo['fps']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
