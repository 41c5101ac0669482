"""``kfac-bench fidelity`` and :func:`run_for_run_dir` (the sweep runner's entry point)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import variants
from kfac_bench.fidelity.batch import (
    Source,
    build_measured_policy,
    collect,
    fisher_problem,
    load_source,
    training_gradient,
)
from kfac_bench.fidelity.compare import DAMPING_MODES, Settings, measure
from kfac_bench.fidelity.output import write_csv, write_figure
from kfac_bench.rl.envs import env_family, make_env
from kfac_bench.rl.trainer import resolve_device
from kfac_bench.store import env_slug

# Default batch per env family: a minute on two CPU cores for the MLP and the MinAtar CNN.
DEFAULT_BATCH = {"classic": 256, "generic": 256, "minatar": 128, "atari": 256}
CSV_NAME = "fidelity.csv"
FIGURE_STEM = "fidelity"


@dataclass(frozen=True)
class Request:
    """Everything one fidelity measurement needs (the CLI's arguments, resolved)."""

    env: str | None = None
    checkpoint: Path | None = None
    batch: int | None = None
    variants: tuple[str, ...] | None = None  # None: every registered variant
    damping_modes: tuple[str, ...] = DAMPING_MODES
    dampings: tuple[float, ...] | None = None  # None: the config's kfac.damping
    eigen_clip: float | None = None  # None: the config's kfac.eigen_clip
    budget_s: float = 60.0
    out: Path | None = None
    seed: int = 0
    probes: int = 64
    cg_iters: int | None = None
    device: str | None = None  # None: the run config's ``device`` (cpu unless the run said so)
    max_jacobian_mb: float = 4096.0
    reference: bool = True
    figure: bool = True


def default_out(request: Request, env_id: str) -> Path:
    """The checkpoint's run directory, else ``runs/fidelity/<env-slug>/``."""
    if request.out is not None:
        return Path(request.out)
    if request.checkpoint is not None:
        path = Path(request.checkpoint)
        return path if path.is_dir() else path.parent
    return Path("runs/fidelity") / env_slug(env_id)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the block (0: leave torch's default), then restore."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fidelity(request: Request, log: Callable[[str], None] | None = None) -> Path:
    """Measure, write ``fidelity.csv`` (+ ``fidelity.png``/``.svg``), return the CSV path.

    Runs with the config's ``torch_threads`` (as the trainer does; 1 for classic and MinAtar).
    """
    source = load_source(request.env, request.checkpoint, request.seed)
    with _threads(source.config.torch_threads):
        return _fidelity(request, source, log)


def _fidelity(request: Request, source: Source, log: Callable[[str], None] | None) -> Path:
    say = log or (lambda message: None)
    start = time.monotonic()
    for name in request.variants or ():
        variants.get(name)  # unknown -> ValueError listing the valid ones
    for mode in request.damping_modes:
        if mode not in DAMPING_MODES:
            raise ValueError(
                f"unknown damping mode {mode!r}; choose from {', '.join(DAMPING_MODES)}"
            )
    config = source.config
    batch = request.batch or DEFAULT_BATCH[env_family(config.env)]
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    device = resolve_device(request.device or config.device)
    kfac = config.kfac
    if request.dampings is not None:
        # an explicit λ grid: per-factor γ follows λ (γ = √λ) so the rows form one sweep
        kfac = dataclasses.replace(kfac, factor_damping=None)
    settings = Settings(
        variants=tuple(request.variants or variants.names()),
        damping_modes=tuple(request.damping_modes),
        dampings=tuple(request.dampings or (kfac.damping,)),
        eigen_clip=kfac.eigen_clip if request.eigen_clip is None else request.eigen_clip,
        probes=request.probes,
        min_probes=min(8, request.probes),
        cg_max_iter=request.cg_iters,
        max_jacobian_mb=request.max_jacobian_mb,
        budget_s=request.budget_s,
        reference=request.reference,
        seed=request.seed,
    )

    env = make_env(config.env, min(config.rollout.n_envs, batch), training=True, atari=config.atari)
    try:
        policy = build_measured_policy(source, env, request.seed, device)
        say(f"{config.env}: {source.label} policy ({policy.arch}), batch {batch}, device {device}")
        rollout = collect(policy, env, config, batch, request.seed)
    finally:
        env.close()
    problem = fisher_problem(policy, rollout, config)
    g = training_gradient(policy, problem.slots, rollout, config)
    say(f"[{time.monotonic() - start:6.1f}s] collected {batch} observations")
    rows = measure(problem, g, kfac, settings, log=say, started=start)

    context = {
        "env": config.env,
        "checkpoint": source.label,
        "step": source.step,
        "seed": request.seed,
        "batch": batch,
    }
    rows = [{**context, **row} for row in rows]
    out = default_out(request, config.env)
    csv_path = out / CSV_NAME
    write_csv(csv_path, rows)
    written = [csv_path]
    if request.figure:
        title = f"{config.env} — {source.label} (step {source.step}), batch {batch}"
        written += write_figure(out / FIGURE_STEM, rows, title)
    say(f"wrote {', '.join(str(p) for p in written)} ({time.monotonic() - start:.1f}s total)")
    return csv_path


def run_for_run_dir(
    run_dir: Path,
    *,
    batch: int | None = None,
    budget_s: float = 60,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Default comparison on a finished run's checkpoint -> ``<run_dir>/fidelity.csv`` (+ figure).

    Every variant × every damping mode at the run's λ and τ, on the initial seed 0 batch of the
    trained policy. Raises FileNotFoundError when ``<run_dir>/checkpoint.pt`` is missing.
    """
    run_dir = Path(run_dir)
    request = Request(checkpoint=run_dir, batch=batch, budget_s=budget_s, out=run_dir)
    return fidelity(request, log=log)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Compares each variant's K-FAC blocks and preconditioned gradient with the exact sampled\n"
        "Fisher F = (1/B) Σ g_n g_nᵀ of the Fisher loss on one batch (same actions and noise).\n"
        f"default batch: {', '.join(f'{k} {v}' for k, v in DEFAULT_BATCH.items())}.\n"
        "example: kfac-bench fidelity --env MinAtar/Breakout-v1 --out runs/fidelity/breakout"
    )
    parser.add_argument("--env", default=None, help="Gymnasium id (default: the checkpoint's)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="a run directory (or its checkpoint.pt); default: the initial policy",
    )
    parser.add_argument(
        "--batch", type=int, default=None, metavar="N", help="observations (default per env family)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="variants to compare (default: all registered)",
    )
    parser.add_argument(
        "--damping-modes",
        nargs="+",
        default=list(DAMPING_MODES),
        choices=DAMPING_MODES,
        metavar="MODE",
        help=f"damping modes (default: {' '.join(DAMPING_MODES)})",
    )
    parser.add_argument(
        "--damping",
        type=float,
        nargs="+",
        default=None,
        metavar="λ",
        help="λ values (default: the config's kfac.damping)",
    )
    parser.add_argument(
        "--eigen-clip",
        type=float,
        default=None,
        metavar="τ",
        help="eigenvalue clip τ (default: the config's kfac.eigen_clip)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time budget for the exact solves and probes (default 60)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: the run dir, else runs/fidelity/<env>/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="env reset, actions, noise, probes")
    parser.add_argument(
        "--probes",
        type=int,
        default=64,
        help="random probes for blocks too large to form (default 64)",
    )
    parser.add_argument(
        "--cg-iters", type=int, default=None, help="CG iteration cap (default 2·batch + 50)"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: cuda when available",
    )
    parser.add_argument(
        "--max-jacobian-mb",
        type=float,
        default=4096.0,
        help="store per-example gradients up to this size, else jvp/vjp products",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="omit the exact-block-diagonal reference rows"
    )
    parser.add_argument("--no-figure", action="store_true", help="write the CSV only")


def run(args: argparse.Namespace) -> int:
    if args.probes < 1:
        raise ValueError(f"--probes must be at least 1, got {args.probes}")
    request = Request(
        env=args.env,
        checkpoint=args.checkpoint,
        batch=args.batch,
        variants=tuple(args.variants) if args.variants else None,
        damping_modes=tuple(args.damping_modes),
        dampings=tuple(args.damping) if args.damping else None,
        eigen_clip=args.eigen_clip,
        budget_s=args.budget,
        out=args.out,
        seed=args.seed,
        probes=args.probes,
        cg_iters=args.cg_iters,
        device=args.device,
        max_jacobian_mb=args.max_jacobian_mb,
        reference=not args.no_reference,
        figure=not args.no_figure,
    )
    fidelity(request, log=lambda message: print(f"fidelity: {message}", flush=True))
    return 0
