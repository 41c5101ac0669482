"""``kfac-bench sweep``: run every run of a sweep spec, resumably, on local processes or Ray.

Usage::

    kfac-bench sweep runs/quick.toml                  # local process pool, one worker per core
    kfac-bench sweep runs/quick.toml --workers 2
    kfac-bench sweep runs/quick.toml --dry-run        # validate, print the run table; run nothing
    kfac-bench sweep runs/quick.toml --retry-failed   # also rerun runs recorded as failed
    kfac-bench sweep runs/atari.toml --backend ray [--ray-address HOST:6379]

The spec format is in :mod:`kfac_bench.sweep.spec`. A sweep writes ``<spec dir>/<name>/``
(``runs/quick/`` for ``runs/quick.toml``; ``--out`` to choose another)::

    runs/<name>/sweep.json       name, spec, spec_hash, thresholds, runs: [{name, label, variant,
                                 env, seed, axes, preset, state, steps, error[, fidelity]}]
    runs/<name>/<run>/           the run directory of DESIGN.md §5, plus train.log (the worker's
                                 stdout/stderr and the traceback of a failure) and .lock

Lifecycle:

* Validation first (every problem is printed, one line each; nothing is written on error), then
  each run's state is read from its directory (:mod:`kfac_bench.sweep.plan`): ``done`` and
  ``diverged`` runs are results and are skipped; ``running`` (interrupted) runs resume from their
  checkpoint (the trainer does it); ``failed`` runs are rerun only with ``--retry-failed`` and
  otherwise reported as failed again. A run whose ``config.json`` differs from what the spec now
  gives is reported as failed with the differing keys, and never touched.
* Local backend: each run is one spawned process (``multiprocessing`` spawn context, one run per
  process), at most ``--workers`` at a time, longest estimated run first. Each worker gets
  ``cores // workers`` torch threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and
  ``torch.set_num_threads``; a ``torch_threads`` in the run's config, which the classic and
  continuous families set to 1, wins — it is part of the config, so it is not changed per machine). Workers
  report progress through a pipe each; a worker that dies without reporting (killed, out of
  memory) is recorded ``failed`` in its ``status.json`` by the sweep, with the reason.
* Ray backend (``pip install 'kfac-bench[ray]'``): the same runs as Ray tasks with
  ``num_cpus = cores // workers`` (or ``--cpus-per-run``, ``--gpus-per-run``) on a local Ray
  instance, or on the cluster of ``--ray-address`` / ``RAY_ADDRESS`` (the run directories must be
  on a filesystem shared with the workers, and kfac-bench installed there). Progress comes back
  through a ``ray.util.queue.Queue``.
* Every worker holds an exclusive ``fcntl.flock`` on ``<run>/.lock`` while it writes the run; a
  run locked by someone else (another sweep, or a worker orphaned by a killed sweep, which exits
  at its next update when it sees its parent gone) is put back in the queue and retried.
* ``sweep.json`` is rewritten atomically whenever a run changes state. Ctrl-C (or SIGTERM) stops
  the workers cleanly (runs stay ``running`` at their last checkpoint) and exits 130. The exit
  status is 1 when any run is failed (or left unfinished), else 0 (``diverged`` is a result); a
  summary table (run, state, steps, error) ends every sweep.

This module only turns the command line into a :class:`~kfac_bench.sweep.scheduler.SweepOptions`
and wires the layers together: spec -> plan -> scheduler (with its backend) -> display.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kfac_bench.sweep.display import Display, print_plan, print_summary
from kfac_bench.sweep.plan import Entry, inspect_run, plan_fidelity, plan_runs
from kfac_bench.sweep.scheduler import BACKENDS, Sweep, SweepOptions
from kfac_bench.sweep.spec import SpecError, SweepSpec, load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "spec format: see kfac_bench/sweep/spec.py (or the README).\n"
        "exit status: 0 all runs done/diverged, 1 some run failed, 2 bad spec, 130 interrupted."
    )
    parser.add_argument("spec", type=Path, help="sweep spec, e.g. runs/quick.toml")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="runs at a time (default: physical cores; ray: as many as the cluster fits)",
    )
    parser.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="local",
        help="local: a spawned process per run (default); ray: Ray tasks (the ray extra)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        metavar="C",
        help="ray: num_cpus per task (default: cores // workers, 1 without --workers)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="G",
        help="ray: num_gpus per task, e.g. 0.25 to share a GPU between 4 runs (default 0)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and list; run nothing")
    parser.add_argument(
        "--retry-failed", action="store_true", help="rerun failed runs (from their checkpoint)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="sweep directory (default: <spec dir>/<name>, e.g. runs/quick)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from(args: argparse.Namespace) -> SweepOptions:
    """The validated options of the parsed flags (ValueError naming a flag outside its domain)."""
    return SweepOptions(
        backend=args.backend,
        workers=args.workers,
        ray_address=args.ray_address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
        runs = plan_runs(spec)
    except SpecError as error:
        for problem in error.problems:
            print(f"kfac-bench: error: {error.path}: {problem}", file=sys.stderr)
        return 2
    options = options_from(args)
    out = Path(args.out) if args.out is not None else spec.path.parent / spec.name
    entries = [inspect_run(r, out / r.name, retry_failed=options.retry_failed) for r in runs]
    if spec.fidelity:
        plan_fidelity(entries)
    if args.dry_run:
        print_plan(spec, out, entries)
        return 0
    sweep = Sweep(spec, out, entries, options)
    enabled = options.progress and sys.stderr.isatty()
    interrupted = sweep.execute(lambda shown: Display(shown, enabled=enabled))
    print_summary(spec, out, entries)
    return exit_status(spec, entries, interrupted)


def exit_status(spec: SweepSpec, entries: list[Entry], interrupted: bool) -> int:
    """130 interrupted, 1 a run failed or is unfinished, else 0; with the line that says why."""
    if interrupted:
        print(
            f"interrupted; run `kfac-bench sweep {spec.path}` again to resume",
            file=sys.stderr,
        )
        return 130
    unfinished = [e for e in entries if e.state in ("running", "pending")]
    if unfinished:
        print(
            f"{len(unfinished)} run(s) unfinished; run the sweep again to resume them",
            file=sys.stderr,
        )
    return 1 if unfinished or any(e.state == "failed" for e in entries) else 0
