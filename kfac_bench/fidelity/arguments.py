"""``kfac-bench fidelity``: flags -> :class:`~kfac_bench.fidelity.command.Request` -> measurement.

Flag values are checked by :func:`~kfac_bench.fidelity.command.validate` (domains in
``command.DOMAINS``) before anything is loaded or written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kfac_bench.fidelity.command import DEFAULT_BATCH, Request, fidelity
from kfac_bench.fidelity.compare import DAMPING_MODES, FISHER_TYPES, REFERENCES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Compares each variant's K-FAC blocks and preconditioned gradient with two exact Fishers\n"
        "on one batch: true-fisher (the expectation over the policy's actions and the value\n"
        "noise) and sampled-fisher (F = (1/B) Σ g_n g_nᵀ of the trainer's Fisher pass).\n"
        f"default batch: {', '.join(f'{k} {v}' for k, v in DEFAULT_BATCH.items())}.\n"
        "example: kfac-bench fidelity --env MinAtar/Breakout-v1 --out runs/fidelity/breakout\n"
        "         kfac-bench fidelity --checkpoint RUN_DIR --running-updates 10"
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
        "--cg-iters",
        type=int,
        default=None,
        help="CG iteration cap when the Jacobian is not stored (default 2·N + 50, N its rows: "
        "B sampled, B·(A+1) true-fisher)",
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
        "--references",
        nargs="+",
        default=list(REFERENCES),
        metavar="REF",
        help=f"exact references to measure against (default: {' '.join(REFERENCES)})",
    )
    parser.add_argument(
        "--fisher-types",
        default="sampled",
        metavar="TYPES",
        help=f"comma-separated passes the K-FAC side is built from: {', '.join(FISHER_TYPES)} "
        "(sampled: the trainer's Fisher loss; empirical: the training loss's per-example "
        "gradients, kfac.fisher_type); the references do not change (default sampled)",
    )
    parser.add_argument(
        "--running-updates",
        type=int,
        default=0,
        metavar="K",
        help="also measure the running factors after K Fisher batches (the run's start rule "
        "and stats decay; default 0: this batch's factors only)",
    )
    parser.add_argument(
        "--inverse-staleness",
        type=int,
        nargs="+",
        default=[],
        metavar="S",
        help="also measure the running-K factors as of step K − S, as a decomposition S updates "
        "old preconditions step K (kfac.inverse_every = n gives S = 0 … n − 1; needs "
        "--running-updates K > S)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="omit the exact rows (exact-block-diagonal, sampled-fisher vs true-fisher)",
    )
    parser.add_argument("--no-figure", action="store_true", help="write the CSV only")


def run(args: argparse.Namespace) -> int:
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
        references=tuple(args.references),
        running_updates=args.running_updates,
        inverse_staleness=tuple(args.inverse_staleness),
        fisher_types=tuple(t.strip() for t in args.fisher_types.split(",")),
    )
    fidelity(request, log=lambda message: print(f"fidelity: {message}", flush=True))
    return 0
