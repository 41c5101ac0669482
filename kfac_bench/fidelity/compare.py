"""Compare every variant × damping mode × λ with the exact Fisher on one batch -> tidy rows.

For each λ of the grid the exact references are computed once:

- network: d* = (F + λ_ref I)⁻¹ g by CG with exact Fisher-vector products (``exact.py``);
- layer l: d*_l = (F_ll + λ_ref I)⁻¹ g_l, the exact *block-diagonal* damped natural gradient
  (dense solve when the block is small, CG otherwise), so that a layer row isolates the
  Kronecker factorisation and damping of that one block.

λ_ref is the damping the variant's preconditioner adds to its own curvature (``reference_damping``):
λ for ``eigen`` (1/(d_G d_A + λ)) and ``tikhonov-pi`` (π√λ · √λ/π = λ), γ² for ``tikhonov``
((A + γI) ⊗ (G + γI) = A ⊗ G + γ(A ⊗ I + I ⊗ G) + γ²I; the cross term is the departure measured).

Variant direction: d_l = F̃_l⁻¹ g_l per layer (``approx.py``), d = (d_l)_l. Rows are one per
variant × damping_mode × λ × layer plus ``layer = "network"``; with ``reference`` an extra
network row per λ (variant ``exact-block-diagonal``, damping_mode ``exact``) compares the exact
block-diagonal direction with d*: the ceiling of any block-diagonal method on this batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature.inverse import FactorInverseError
from kfac_bench.fidelity.approx import KfacBlock, capture_layer_batches, variant_blocks
from kfac_bench.fidelity.exact import (
    FisherOperator,
    FisherProblem,
    JacobianFisher,
    conjugate_gradient,
    damped_solve,
    fisher_operator,
)
from kfac_bench.fidelity.layout import LayerSlot
from kfac_bench.fidelity.metrics import (
    BlockError,
    dense_relative_error,
    direction_metrics,
    probe_relative_error,
    rademacher,
)

REFERENCE_VARIANT = "exact-block-diagonal"
NETWORK = "network"
DAMPING_MODES = ("eigen", "tikhonov", "tikhonov-pi")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """What to compare and how hard to try. ``budget_s`` bounds the exact solves and probes."""

    variants: tuple[str, ...]
    damping_modes: tuple[str, ...] = DAMPING_MODES
    dampings: tuple[float, ...] = (0.01,)
    eigen_clip: float = 1e-6
    probes: int = 64
    min_probes: int = 8
    dense_limit: int = 4_000_000  # entries: blocks up to this size are formed densely
    cg_tol: float = 1e-10
    cg_max_iter: int | None = None  # None: 2·B + 50
    max_jacobian_mb: float = 4096.0  # store J (B×P) up to this size, else jvp/vjp products
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


def reference_damping(config: KfacConfig) -> float:
    """λ_ref of the exact reference (F + λ_ref I)⁻¹ matched to ``config`` (module docstring)."""
    if config.damping_mode == "tikhonov" and config.factor_damping is not None:
        return config.factor_damping**2  # γ given; with γ = √λ (default) γ² is λ itself
    return config.damping


@dataclass(frozen=True)
class Solve:
    direction: torch.Tensor
    iterations: int
    residual: float


def _dense_solve(block: torch.Tensor, rhs: torch.Tensor, damping: float) -> Solve:
    eye = torch.eye(block.shape[0], dtype=block.dtype, device=block.device)
    damped = block + damping * eye
    x = torch.linalg.solve(damped, rhs)
    residual = float((damped @ x - rhs).norm() / rhs.norm()) if float(rhs.norm()) > 0 else 0.0
    return Solve(x, 0, residual)


def _cg_solve(op: FisherOperator, rhs, damping, slot, options: dict) -> Solve:
    result = damped_solve(op, rhs, damping, slot, **options)
    return Solve(result.x, result.iterations, result.residual)


class _Exact:
    """The variant-independent half: dense blocks, references, probe products (cached)."""

    def __init__(
        self, op: FisherOperator, problem: FisherProblem, g: torch.Tensor, settings: Settings
    ):
        self.op = op
        self.slots = problem.slots
        self.g = g
        self.settings = settings
        self.dense_blocks: dict[str, torch.Tensor] = {}
        for slot in self.slots:
            if slot.size**2 <= settings.dense_limit:
                jac = op.block_jacobian(slot)
                self.dense_blocks[slot.name] = jac.T @ jac / op.batch
        self.network_dense: torch.Tensor | None = None
        if problem.dim**2 <= settings.dense_limit:
            jac = op.block_jacobian(None)
            self.network_dense = jac.T @ jac / op.batch
        self.network: dict[float, Solve] = {}
        self.layers: dict[float, dict[str, Solve]] = {}

    def solve(self, damping: float, cg_options: dict) -> None:
        if damping in self.network:
            return
        self.network[damping] = _cg_solve(self.op, self.g, damping, None, cg_options)
        self.layers[damping] = {}
        for slot in self.slots:
            rhs = slot.take(self.g)
            if slot.name in self.dense_blocks:
                solve = _dense_solve(self.dense_blocks[slot.name], rhs, damping)
            else:
                solve = _cg_solve(self.op, rhs, damping, slot, cg_options)
            self.layers[damping][slot.name] = solve

    def energy(self, x: torch.Tensor, slot: LayerSlot | None) -> torch.Tensor:
        """xᵀ F x (network) or x_lᵀ F_ll x_l (one layer)."""
        if slot is not None and slot.name in self.dense_blocks:
            return x @ self.dense_blocks[slot.name] @ x
        return self.op.energy(x, slot)

    def block_products(self, probes: torch.Tensor) -> dict[str, torch.Tensor]:
        """F_ll V_l for every layer (rows of V are probes)."""
        out = {}
        for slot in self.slots:
            v = slot.take(probes)
            dense = self.dense_blocks.get(slot.name)
            out[slot.name] = v @ dense if dense is not None else self.op.mv(v, slot)
        return out


def _probe_count(
    exact: _Exact,
    blocks: list[KfacBlock],
    probes: torch.Tensor,
    n_variants: int,
    clock: Clock,
    settings: Settings,
) -> int:
    """How many probes fit in the time left (pilot on ``min_probes``; at least that many)."""
    pilot = probes[: settings.min_probes]
    start = time.monotonic()
    exact.op.mv(pilot)
    exact.block_products(pilot)
    middle = time.monotonic()
    for block in blocks:
        block.mv(block.slot.take(pilot))
    spent = (middle - start) + (time.monotonic() - middle) * max(1, n_variants)
    per_probe = spent / pilot.shape[0]
    affordable = int(0.6 * max(clock.remaining(), 0.0) / max(per_probe, 1e-9))
    return max(settings.min_probes, min(settings.probes, affordable))


def _block_errors(
    blocks: list[KfacBlock],
    exact: _Exact,
    probes: torch.Tensor | None,
    exact_products: dict[str, torch.Tensor],
    network_products: torch.Tensor | None,
    frobenius: dict[str | None, float | None],
) -> dict[str, BlockError]:
    """Relative Frobenius error of every layer block and of the block-diagonal whole."""
    errors: dict[str, BlockError] = {}
    approx_parts = []
    for block in blocks:
        slot = block.slot
        dense = exact.dense_blocks.get(slot.name)
        if probes is not None:
            approx_parts.append(block.mv(slot.take(probes)))
        if dense is not None:
            errors[slot.name] = dense_relative_error(dense, block.dense())
        else:
            errors[slot.name] = probe_relative_error(
                exact_products[slot.name], approx_parts[-1], frobenius[slot.name]
            )
    if exact.network_dense is not None:
        approx = torch.block_diag(*(block.dense() for block in blocks))
        errors[NETWORK] = dense_relative_error(exact.network_dense, approx)
    else:
        errors[NETWORK] = probe_relative_error(
            network_products, torch.cat(approx_parts, dim=-1), frobenius[None]
        )
    return errors


def _error_columns(error: BlockError) -> dict[str, Any]:
    return {
        "block_rel_error": error.value,
        "block_error_se": error.se,
        "block_error_method": error.method,
        "block_error_probes": error.probes,
    }


def _solve_columns(solve: Solve) -> dict[str, Any]:
    return {"cg_iters": solve.iterations, "cg_residual": solve.residual}


def _variant_rows(
    name: str,
    blocks: list[KfacBlock],
    errors: dict[str, BlockError],
    exact: _Exact,
    config: KfacConfig,
) -> list[dict[str, Any]]:
    """The rows of one variant under one ``KfacConfig`` (layers, then ``network``)."""
    lam_ref = reference_damping(config)
    head = {
        "variant": name,
        "damping_mode": config.damping_mode,
        "damping": config.damping,
        "reference_damping": lam_ref,
        "eigen_clip": config.eigen_clip,
    }
    rows, parts = [], []
    totals = {"A_clipped": 0, "G_clipped": 0, "bias_G_clipped": None, "A_dim": 0, "G_dim": 0}
    for block in blocks:
        slot = block.slot
        g_l = slot.take(exact.g)
        reference = exact.layers[lam_ref][slot.name]
        pre = block.precondition(g_l, config)
        parts.append(pre.delta)
        counts = {
            "A_clipped": pre.a_clipped,
            "G_clipped": pre.g_clipped,
            "bias_G_clipped": pre.bias_g_clipped,
            "A_dim": int(block.factors.A.shape[0]),
            "G_dim": int(block.factors.G.shape[0]),
        }
        for key, value in counts.items():
            if value is not None:
                totals[key] = (totals[key] or 0) + value
        metrics = direction_metrics(
            pre.delta, reference.direction, g_l, lambda x, s=slot: exact.energy(x, s)
        )
        rows.append(
            {
                **head,
                "layer": slot.name,
                "params": slot.size,
                **_error_columns(errors[slot.name]),
                **metrics,
                **counts,
                **_solve_columns(reference),
            }
        )
    d = torch.cat(parts)
    reference = exact.network[lam_ref]
    metrics = direction_metrics(d, reference.direction, exact.g, lambda x: exact.energy(x, None))
    rows.append(
        {
            **head,
            "layer": NETWORK,
            "params": int(exact.g.numel()),
            **_error_columns(errors[NETWORK]),
            **metrics,
            **totals,
            **_solve_columns(reference),
        }
    )
    return rows


def _failed_rows(name: str, blocks: list[KfacBlock], config: KfacConfig, error: str) -> list[dict]:
    head = {
        "variant": name,
        "damping_mode": config.damping_mode,
        "damping": config.damping,
        "reference_damping": reference_damping(config),
        "eigen_clip": config.eigen_clip,
        "error": error,
    }
    return [{**head, "layer": b.slot.name} for b in blocks] + [{**head, "layer": NETWORK}]


def _reference_rows(exact: _Exact, damping: float, network_error: BlockError) -> dict[str, Any]:
    """``exact-block-diagonal``: (F_ll + λI)⁻¹ g_l stacked, against (F + λI)⁻¹ g."""
    d = torch.cat([exact.layers[damping][s.name].direction for s in exact.slots])
    reference = exact.network[damping]
    metrics = direction_metrics(d, reference.direction, exact.g, lambda x: exact.energy(x, None))
    return {
        "variant": REFERENCE_VARIANT,
        "damping_mode": "exact",
        "damping": damping,
        "reference_damping": damping,
        "layer": NETWORK,
        "params": int(exact.g.numel()),
        **_error_columns(network_error),
        **metrics,
        **_solve_columns(reference),
    }


def measure(
    problem: FisherProblem,
    g: torch.Tensor,
    base_config: KfacConfig,
    settings: Settings,
    log: Log | None = None,
    started: float | None = None,
) -> list[dict[str, Any]]:
    """All comparison rows for one batch (see the module docstring).

    ``problem``: batch, actions, noise and the float64 policy; ``g`` (P,) the training-loss
    gradient in M order; ``base_config`` the run's ``KfacConfig`` (``factor_damping`` is kept).
    ``started``: the ``time.monotonic()`` the budget counts from (default: now).
    """
    clock = Clock(settings.budget_s, started)

    def say(message: str) -> None:
        if log is not None:
            log(f"[{clock.elapsed():6.1f}s] {message}")

    for mode in settings.damping_modes:
        if mode not in DAMPING_MODES:
            raise ValueError(
                f"unknown damping mode {mode!r}; choose from {', '.join(DAMPING_MODES)}"
            )
    strategies = {name: variants.get(name) for name in settings.variants}
    op = fisher_operator(problem, settings.max_jacobian_mb * 2**20)
    kind = "stored Jacobian" if isinstance(op, JacobianFisher) else "jvp/vjp products"
    say(f"per-example gradients: B={problem.batch}, P={problem.dim} ({kind})")

    batches = capture_layer_batches(problem)
    blocks = {name: variant_blocks(s, problem.slots, batches) for name, s in strategies.items()}
    exact = _Exact(op, problem, g, settings)

    configs = [
        row_config(base_config, mode, lam, settings.eigen_clip)
        for lam in settings.dampings
        for mode in settings.damping_modes
    ]
    references = sorted({reference_damping(c) for c in configs} | set(settings.dampings))
    cg_options = {
        "tol": settings.cg_tol,
        "max_iter": settings.cg_max_iter or 2 * problem.batch + 50,
        "deadline": clock.deadline(0.5),
    }
    for lam in references:
        exact.solve(lam, cg_options)
        net = exact.network[lam]
        say(
            f"exact (F + {lam:g} I)^-1 g: CG {net.iterations} iterations, "
            f"relative residual {net.residual:.1e}"
        )

    # probes for the blocks too large to form (and the whole network)
    needs_probes = exact.network_dense is None or len(exact.dense_blocks) < len(problem.slots)
    probes = network_products = None
    exact_products: dict[str, torch.Tensor] = {}
    frobenius: dict[str | None, float | None] = {}
    if needs_probes:
        generator = torch.Generator().manual_seed(settings.seed + 7919)
        probes = rademacher(settings.probes, problem.dim, generator, g.dtype, g.device)
        first = next(iter(blocks.values()))
        count = _probe_count(exact, first, probes, len(blocks), clock, settings)
        if count < settings.probes:
            say(f"budget: {count} probes instead of {settings.probes}")
        probes = probes[:count]
        network_products = exact.op.mv(probes)
        exact_products = exact.block_products(probes)
        frobenius = {s.name: op.frobenius_sq(s) for s in problem.slots}
        frobenius[None] = op.frobenius_sq(None)
        say(f"exact Fisher-vector products on {count} probes")

    rows: list[dict[str, Any]] = []
    for name, layer_blocks in blocks.items():
        errors = _block_errors(
            layer_blocks, exact, probes, exact_products, network_products, frobenius
        )
        for config in configs:
            try:
                new = _variant_rows(name, layer_blocks, errors, exact, config)
            except FactorInverseError as error:
                say(f"{name} {config.damping_mode} λ={config.damping:g}: {error}")
                new = _failed_rows(name, layer_blocks, config, str(error).splitlines()[0])
            rows.extend(new)
            net = new[-1]
            say(
                f"{name:<13} {config.damping_mode:<11} λ={config.damping:<8g} "
                f"network cosine {net.get('cosine', math.nan):.4f}  "
                f"block error {errors[NETWORK].value:.3f}"
            )
    if settings.reference:
        errors = _reference_network_error(
            exact, probes, exact_products, network_products, frobenius
        )
        for lam in settings.dampings:
            rows.append(_reference_rows(exact, lam, errors))
    if clock.remaining() < 0:
        say(f"over budget by {-clock.remaining():.1f}s")
    return rows


def _reference_network_error(
    exact: _Exact,
    probes: torch.Tensor | None,
    exact_products: dict[str, torch.Tensor],
    network_products: torch.Tensor | None,
    frobenius: dict[str | None, float | None],
) -> BlockError:
    """‖F − blockdiag(F)‖_F / ‖F‖_F: what block-diagonality alone leaves out."""
    if exact.network_dense is not None:
        parts = []
        for slot in exact.slots:
            block = exact.dense_blocks.get(slot.name)
            if block is None:
                jac = exact.op.block_jacobian(slot)
                block = jac.T @ jac / exact.op.batch
            parts.append(block)
        return dense_relative_error(exact.network_dense, torch.block_diag(*parts))
    diag = torch.cat([exact_products[s.name] for s in exact.slots], dim=-1)
    return probe_relative_error(network_products, diag, frobenius[None])


__all__ = [
    "DAMPING_MODES",
    "NETWORK",
    "REFERENCE_VARIANT",
    "Settings",
    "conjugate_gradient",
    "measure",
    "reference_damping",
    "row_config",
]
