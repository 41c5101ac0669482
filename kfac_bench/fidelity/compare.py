"""Compare every variant × damping mode × λ with the exact references on one batch -> tidy rows.

References (``references.py``): ``true-fisher`` (the exact expectation over the categorical policy
and the value noise) and ``sampled-fisher`` (the trainer's own Fisher pass: this batch's sampled
actions and noise). For each reference and each λ of the grid, computed once:

- network: d* = (F + λ_ref I)⁻¹ g (row-space solve when the Jacobian is stored, else CG);
- layer l: d*_l = (F_ll + λ_ref I)⁻¹ g_l, the exact *block-diagonal* damped natural gradient, so
  that a layer row isolates the Kronecker factorisation and damping of that one block.

λ_ref is the damping the variant's preconditioner adds to its own curvature
(:func:`~kfac_bench.fidelity.rows.reference_damping`).

Variant direction: d_l = F̃_l⁻¹ g_l per layer (``approx.py``; ``ekfac``: Q diag(s + λ)⁻¹ Qᵀ g_l in
the Kronecker eigenbasis, ``eigenbasis.py``), d = (d_l)_l, from each *factor set*: ``batch`` (this
batch's factors) and, in running mode, ``running-K`` (the trainer's running averages after K
Fisher batches, ``running.py``), each per Fisher type (``fisher_type``: ``sampled``, the trainer's
Fisher pass, or ``empirical``, the training loss's data terms; the references do not change). Rows are one per reference × factor set ×
variant × damping_mode × λ × layer plus ``layer = "network"``; with ``reference`` extra rows per
reference and λ compare the exact block-diagonal direction with d* (variant
``exact-block-diagonal``: the ceiling of any block-diagonal method on this batch) and, against
``true-fisher``, the sampled reference's own directions (variant ``sampled-fisher``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature.inverse import FactorInverseError
from kfac_bench.fidelity.approx import FisherLoss, capture_layer_batches, variant_blocks
from kfac_bench.fidelity.eigenbasis import EKFAC
from kfac_bench.fidelity.exact import FisherProblem
from kfac_bench.fidelity.metrics import rademacher
from kfac_bench.fidelity.references import (
    REFERENCES,
    SAMPLED_FISHER,
    TRUE_FISHER,
    Reference,
)
from kfac_bench.fidelity.rows import (
    NETWORK,
    REFERENCE_VARIANT,
    FactorSet,
    block_diagonal_error,
    block_diagonal_row,
    cross_errors,
    cross_rows,
    failed_rows,
    kfac_block_errors,
    precondition_all,
    reference_damping,
    variant_rows,
)
from kfac_bench.fidelity.solvers import conjugate_gradient

DAMPING_MODES = ("eigen", "tikhonov", "tikhonov-pi", EKFAC)
FISHER_TYPES = ("sampled", "empirical")
BATCH_FACTORS = "batch"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """What to compare and how hard to try. ``budget_s`` bounds the exact solves and probes."""

    variants: tuple[str, ...]
    damping_modes: tuple[str, ...] = DAMPING_MODES
    dampings: tuple[float, ...] = (0.01,)
    eigen_clip: float = 1e-6
    references: tuple[str, ...] = REFERENCES
    fisher_types: tuple[str, ...] = ("sampled",)
    probes: int = 64
    min_probes: int = 8
    dense_limit: int = 4_000_000  # entries: blocks up to this size are formed densely
    cg_tol: float = 1e-10
    cg_max_iter: int | None = None  # None: 2·N + 50 (N rows of the reference's Jacobian)
    max_jacobian_mb: float = 4096.0  # store J (N×P) up to this size, else jvp/vjp products
    budget_s: float = 60.0
    reference: bool = True
    seed: int = 0


class Clock:
    """Wall-clock budget (``time.monotonic``), counted from ``start`` (default: now)."""

    def __init__(self, budget_s: float, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def deadline(self, fraction: float) -> float:
        """The time by which ``fraction`` of the whole budget is spent."""
        return self.start + fraction * self.budget_s


def row_config(base: KfacConfig, mode: str, damping: float, eigen_clip: float) -> KfacConfig:
    """The ``KfacConfig`` of one row (float64 factors and decompositions)."""
    return dataclasses.replace(
        base, damping_mode=mode, damping=damping, eigen_clip=eigen_clip, dtype="float64"
    )


def _probe_count(
    references: list[Reference],
    factor_sets: list[FactorSet],
    probes: torch.Tensor,
    clock: Clock,
    settings: Settings,
) -> int:
    """How many probes fit in the time left (pilot on ``min_probes``; at least that many)."""
    pilot = probes[: settings.min_probes]
    start = time.monotonic()
    for reference in references:
        reference.op.mv(pilot)
        reference.block_products(pilot)
    middle = time.monotonic()
    first = next(iter(factor_sets[0].blocks.values()))
    for block in first:
        block.mv(block.slot.take(pilot))
    n_variants = sum(len(f.blocks) for f in factor_sets) * len(references)
    spent = (middle - start) + (time.monotonic() - middle) * max(1, n_variants)
    per_probe = spent / pilot.shape[0]
    affordable = int(0.6 * max(clock.remaining(), 0.0) / max(per_probe, 1e-9))
    return max(settings.min_probes, min(settings.probes, affordable))


def _references(
    problem: FisherProblem,
    g: torch.Tensor,
    lambdas: list[float],
    settings: Settings,
    clock: Clock,
    say: Log,
) -> list[Reference]:
    """Every requested reference, solved at every λ (CG deadlines share half the budget)."""
    out = []
    count = len(settings.references)
    for i, name in enumerate(settings.references):
        reference = Reference(
            name, problem, g, settings.dense_limit, settings.max_jacobian_mb * 2**20
        )
        kind = "stored Jacobian" if reference.stored else "jvp/vjp products"
        say(f"{name}: {reference.rows} rows of {problem.dim} parameters ({kind})")
        cg_options = {
            "tol": settings.cg_tol,
            "max_iter": settings.cg_max_iter or 2 * reference.rows + 50,
            "deadline": clock.deadline(0.5 * (i + 1) / count),
        }
        for lam in lambdas:
            reference.solve(lam, cg_options)
            net = reference.network[lam]
            how = f"CG {net.iterations} iterations" if net.iterations else "direct solve"
            say(f"{name} (F + {lam:g} I)^-1 g: {how}, relative residual {net.residual:.1e}")
        out.append(reference)
    return out


def check_choices(
    damping_modes: Sequence[str],
    references: Sequence[str],
    fisher_types: Sequence[str],
    fisher_flag: str = "",
) -> None:
    """ValueError naming the first unknown damping mode, reference or Fisher type and the valid
    choices (``fisher_flag``, e.g. ``"--fisher-types: "``, prefixes the Fisher-type line)."""
    for mode in damping_modes:
        if mode not in DAMPING_MODES:
            raise ValueError(
                f"unknown damping mode {mode!r}; choose from {', '.join(DAMPING_MODES)}"
            )
    for name in references:
        if name not in REFERENCES:
            raise ValueError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    for kind in fisher_types:
        if kind not in FISHER_TYPES:
            raise ValueError(
                f"{fisher_flag}unknown fisher type {kind!r}; choose from {', '.join(FISHER_TYPES)}"
            )


def measure(
    problem: FisherProblem,
    g: torch.Tensor,
    base_config: KfacConfig,
    settings: Settings,
    log: Log | None = None,
    started: float | None = None,
    extra_factors: tuple[FactorSet, ...] = (),
    empirical_loss: FisherLoss | None = None,
) -> list[dict[str, Any]]:
    """All comparison rows for one batch (see the module docstring).

    ``problem``: batch, actions, noise and the float64 policy; ``g`` (P,) the training-loss
    gradient in M order; ``base_config`` the run's ``KfacConfig`` (``factor_damping`` is kept).
    ``started``: the ``time.monotonic()`` the budget counts from (default: now).
    ``extra_factors``: factor sets besides this batch's own (``running.running_factor_set``).
    ``empirical_loss``: the empirical Fisher pass's loss (``batch.empirical_loss``), needed when
    ``settings.fisher_types`` has ``empirical``.
    """
    clock = Clock(settings.budget_s, started)

    def say(message: str) -> None:
        if log is not None:
            log(f"[{clock.elapsed():6.1f}s] {message}")

    check_choices(settings.damping_modes, settings.references, settings.fisher_types)
    if "empirical" in settings.fisher_types and empirical_loss is None:
        raise ValueError("fisher type 'empirical' needs the empirical Fisher pass's loss")
    strategies = {name: variants.get(name) for name in settings.variants}
    ekfac = base_config if EKFAC in settings.damping_modes else None
    factor_sets = []
    for kind in settings.fisher_types:
        batches = capture_layer_batches(problem, empirical_loss if kind == "empirical" else None)
        blocks = {
            n: variant_blocks(s, problem.slots, batches, ekfac) for n, s in strategies.items()
        }
        factor_sets.append(FactorSet(BATCH_FACTORS, blocks, fisher_type=kind))
    factor_sets.extend(extra_factors)

    configs = [
        row_config(base_config, mode, lam, settings.eigen_clip)
        for lam in settings.dampings
        for mode in settings.damping_modes
    ]
    lambdas = sorted({reference_damping(c) for c in configs} | set(settings.dampings))
    references = _references(problem, g, lambdas, settings, clock, say)

    # probes for the blocks too large to form (and the whole network), shared by the references
    first = references[0]
    probes = None
    if first.network_dense is None or len(first.dense_blocks) < len(problem.slots):
        generator = torch.Generator().manual_seed(settings.seed + 7919)
        probes = rademacher(settings.probes, problem.dim, generator, g.dtype, g.device)
        count = _probe_count(references, factor_sets, probes, clock, settings)
        if count < settings.probes:
            say(f"budget: {count} probes instead of {settings.probes}")
        probes = probes[:count]
        for reference in references:
            reference.probe(probes)
        say(f"exact Fisher-vector products on {count} probes")

    rows: list[dict[str, Any]] = []
    for factors in factor_sets:
        for name, blocks in factors.blocks.items():
            kinds = {c.damping_mode == EKFAC for c in configs}
            # block errors of A ⊗ G, and of Q diag(s) Qᵀ for the ekfac rows (eigenbasis.py)
            by_kind = {
                is_ekfac: [
                    kfac_block_errors([b.ekfac for b in blocks] if is_ekfac else blocks, r, probes)
                    for r in references
                ]
                for is_ekfac in kinds
            }
            for config in configs:
                errors = by_kind[config.damping_mode == EKFAC]
                label = (
                    f"{name} [{factors.label}, {factors.fisher_type}] {config.damping_mode} "
                    f"λ={config.damping:g}"
                )
                try:
                    directions = precondition_all(blocks, g, config)
                except FactorInverseError as error:
                    say(f"{label}: {error}")
                    first_line = str(error).splitlines()[0]
                    for reference in references:
                        rows.extend(failed_rows(name, factors, reference.name, config, first_line))
                    continue
                cosines = []
                for reference, error in zip(references, errors):
                    new = variant_rows(name, factors, directions, error, reference, config)
                    rows.extend(new)
                    cosines.append(f"{reference.name} {new[-1].get('cosine', math.nan):.4f}")
                say(f"{label}: network cosine {', '.join(cosines)}")
    if settings.reference:
        rows.extend(_exact_rows(references, settings, say))
    if clock.remaining() < 0:
        say(f"over budget by {-clock.remaining():.1f}s")
    return rows


def _exact_rows(references: list[Reference], settings: Settings, say: Log) -> list[dict]:
    """``exact-block-diagonal`` per reference and, with both, ``sampled-fisher`` vs true."""
    rows = []
    for reference in references:
        error = block_diagonal_error(reference)
        rows.extend(block_diagonal_row(reference, lam, error) for lam in settings.dampings)
    by_name = {r.name: r for r in references}
    if TRUE_FISHER in by_name and SAMPLED_FISHER in by_name:
        true, sampled = by_name[TRUE_FISHER], by_name[SAMPLED_FISHER]
        errors = cross_errors(true, sampled)
        for lam in settings.dampings:
            new = cross_rows(true, sampled, lam, errors)
            rows.extend(new)
            say(
                f"sampled-fisher vs true-fisher, λ={lam:g}: network cosine "
                f"{new[-1]['cosine']:.4f}, ‖F_t − F_s‖/‖F_t‖ {errors[NETWORK].value:.3f}"
            )
    return rows


__all__ = [
    "BATCH_FACTORS",
    "DAMPING_MODES",
    "FISHER_TYPES",
    "NETWORK",
    "REFERENCES",
    "REFERENCE_VARIANT",
    "Settings",
    "conjugate_gradient",
    "measure",
    "reference_damping",
    "row_config",
]
