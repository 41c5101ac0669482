"""Tidy rows of the comparison: one variant (one factor set, one ``KfacConfig``) against one
reference, the reference's own block-diagonal ceiling, and the sampled reference against the true
one. Pure bookkeeping over ``references.Reference``, ``approx.KfacBlock`` and ``metrics``.

Block errors e = ‖F − F̃‖_F/‖F‖_F (``metrics.py``): dense when the reference block is formed,
else from the shared probes (F V and F̃ V on the same Rademacher V).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kfac_bench.config import KfacConfig
from kfac_bench.fidelity.approx import KfacBlock, Preconditioned
from kfac_bench.fidelity.eigenbasis import EkfacBlock
from kfac_bench.fidelity.metrics import (
    BlockError,
    dense_relative_error,
    direction_metrics,
    probe_relative_error,
)
from kfac_bench.fidelity.references import SAMPLED_FISHER, Reference, Solve

REFERENCE_VARIANT = "exact-block-diagonal"
CROSS_VARIANT = SAMPLED_FISHER  # the sampled reference's own direction, against the true one
NETWORK = "network"
EXACT_MODE = "exact"


@dataclass(frozen=True)
class FactorSet:
    """The factors a group of rows is measured with: ``label`` is the ``factors`` column
    (``batch`` | ``running-K``); ``blocks[variant]`` the layer blocks; ``rules[variant]`` the
    running average's start rule (running sets only) and ``decay`` its stats decay;
    ``fisher_type`` the pass the factors come from (``sampled`` | ``empirical``)."""

    label: str
    blocks: dict[str, list[KfacBlock]]
    rules: dict[str, str] | None = None
    decay: float | None = None
    fisher_type: str = "sampled"


def reference_damping(config: KfacConfig) -> float:
    """λ_ref of the exact reference (F + λ_ref I)⁻¹ matched to ``config``.

    λ for ``eigen`` (1/(d_G d_A + λ)) and ``tikhonov-pi`` (π√λ · √λ/π = λ); γ² for ``tikhonov``
    ((A + γI) ⊗ (G + γI) = A ⊗ G + γ(A ⊗ I + I ⊗ G) + γ²I: the cross term is the departure measured).
    """
    if config.damping_mode == "tikhonov" and config.factor_damping is not None:
        return config.factor_damping**2  # γ given; with γ = √λ (default) γ² is λ itself
    return config.damping


def kfac_block_errors(
    blocks: list[KfacBlock] | list[EkfacBlock], reference: Reference, probes: torch.Tensor | None
) -> dict[str, BlockError]:
    """Relative Frobenius error of every layer block and of the block-diagonal whole.

    ``blocks``: the Kronecker blocks (``approx.KfacBlock``) or, for ekfac rows, the EKFAC blocks
    Q diag(s) Qᵀ (``eigenbasis.EkfacBlock``: the error in the Kronecker eigenbasis)."""
    errors: dict[str, BlockError] = {}
    approx_parts = []
    for block in blocks:
        slot = block.slot
        dense = reference.dense_blocks.get(slot.name)
        if probes is not None:
            approx_parts.append(block.mv(slot.take(probes)))
        if dense is not None:
            errors[slot.name] = dense_relative_error(dense, block.dense())
        else:
            errors[slot.name] = probe_relative_error(
                reference.layer_products[slot.name],
                approx_parts[-1],
                reference.frobenius[slot.name],
            )
    if reference.network_dense is not None:
        approx = torch.block_diag(*(block.dense() for block in blocks))
        errors[NETWORK] = dense_relative_error(reference.network_dense, approx)
    else:
        errors[NETWORK] = probe_relative_error(
            reference.network_products, torch.cat(approx_parts, dim=-1), reference.frobenius[None]
        )
    return errors


def block_diagonal_error(reference: Reference) -> BlockError:
    """‖F − blockdiag(F)‖_F / ‖F‖_F: what block-diagonality alone leaves out."""
    if reference.network_dense is not None:
        parts = [reference.dense_block(slot) for slot in reference.slots]
        return dense_relative_error(reference.network_dense, torch.block_diag(*parts))
    diag = torch.cat([reference.layer_products[s.name] for s in reference.slots], dim=-1)
    return probe_relative_error(reference.network_products, diag, reference.frobenius[None])


def cross_errors(true: Reference, sampled: Reference) -> dict[str, BlockError]:
    """‖F_true − F_sampled‖_F/‖F_true‖_F per layer block and for the whole (full) matrix."""
    errors: dict[str, BlockError] = {}
    for slot in true.slots:
        mine, other = true.dense_blocks.get(slot.name), sampled.dense_blocks.get(slot.name)
        if mine is not None and other is not None:
            errors[slot.name] = dense_relative_error(mine, other)
        else:
            errors[slot.name] = probe_relative_error(
                true.layer_products[slot.name],
                sampled.layer_products[slot.name],
                true.frobenius[slot.name],
            )
    if true.network_dense is not None and sampled.network_dense is not None:
        errors[NETWORK] = dense_relative_error(true.network_dense, sampled.network_dense)
    else:
        errors[NETWORK] = probe_relative_error(
            true.network_products, sampled.network_products, true.frobenius[None]
        )
    return errors


def error_columns(error: BlockError) -> dict[str, Any]:
    return {
        "block_rel_error": error.value,
        "block_error_se": error.se,
        "block_error_method": error.method,
        "block_error_probes": error.probes,
    }


def solve_columns(solve: Solve) -> dict[str, Any]:
    return {"cg_iters": solve.iterations, "cg_residual": solve.residual}


def _head(reference: str, factors: FactorSet, name: str, config: KfacConfig) -> dict[str, Any]:
    head = {
        "reference": reference,
        "factors": factors.label,
        "fisher_type": factors.fisher_type,
        "variant": name,
        "damping_mode": config.damping_mode,
        "damping": config.damping,
        "reference_damping": reference_damping(config),
        "eigen_clip": config.eigen_clip,
    }
    if factors.rules is not None:
        head["running_init"] = factors.rules[name]
        head["stats_decay"] = factors.decay
    return head


def precondition_all(blocks: list[KfacBlock], g: torch.Tensor, config: KfacConfig):
    """[F̃_l⁻¹ g_l] for every layer under ``config`` (raises FactorInverseError)."""
    return [block.precondition(block.slot.take(g), config) for block in blocks]


def variant_rows(
    name: str,
    factors: FactorSet,
    directions: list[Preconditioned],
    errors: dict[str, BlockError],
    reference: Reference,
    config: KfacConfig,
) -> list[dict[str, Any]]:
    """The rows of one variant under one ``KfacConfig`` against ``reference`` (layers, network).

    ``directions``: :func:`precondition_all` of the variant's blocks (one per layer)."""
    lam_ref = reference_damping(config)
    head = _head(reference.name, factors, name, config)
    rows, parts = [], []
    totals = {"A_clipped": 0, "G_clipped": 0, "bias_G_clipped": None, "A_dim": 0, "G_dim": 0}
    for block, pre in zip(factors.blocks[name], directions):
        slot = block.slot
        g_l = slot.take(reference.g)
        solve = reference.layers[lam_ref][slot.name]
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
            pre.delta, solve.direction, g_l, lambda x, s=slot: reference.energy(x, s)
        )
        rows.append(
            {
                **head,
                "layer": slot.name,
                "params": slot.size,
                **error_columns(errors[slot.name]),
                **metrics,
                **counts,
                **solve_columns(solve),
            }
        )
    d = torch.cat(parts)
    solve = reference.network[lam_ref]
    metrics = direction_metrics(
        d, solve.direction, reference.g, lambda x: reference.energy(x, None)
    )
    rows.append(
        {
            **head,
            "layer": NETWORK,
            "params": int(reference.g.numel()),
            **error_columns(errors[NETWORK]),
            **metrics,
            **totals,
            **solve_columns(solve),
        }
    )
    return rows


def failed_rows(
    name: str, factors: FactorSet, reference: str, config: KfacConfig, error: str
) -> list[dict[str, Any]]:
    head = {**_head(reference, factors, name, config), "error": error}
    return [{**head, "layer": b.slot.name} for b in factors.blocks[name]] + [
        {**head, "layer": NETWORK}
    ]


def _exact_head(reference: Reference, variant: str, damping: float) -> dict[str, Any]:
    return {
        "reference": reference.name,
        "variant": variant,
        "damping_mode": EXACT_MODE,
        "damping": damping,
        "reference_damping": damping,
    }


def block_diagonal_row(reference: Reference, damping: float, error: BlockError) -> dict[str, Any]:
    """``exact-block-diagonal``: (F_ll + λI)⁻¹ g_l stacked, against (F + λI)⁻¹ g."""
    solve = reference.network[damping]
    metrics = direction_metrics(
        reference.block_direction(damping),
        solve.direction,
        reference.g,
        lambda x: reference.energy(x, None),
    )
    return {
        **_exact_head(reference, REFERENCE_VARIANT, damping),
        "layer": NETWORK,
        "params": int(reference.g.numel()),
        **error_columns(error),
        **metrics,
        **solve_columns(solve),
    }


def cross_rows(
    true: Reference, sampled: Reference, damping: float, errors: dict[str, BlockError]
) -> list[dict[str, Any]]:
    """``sampled-fisher`` against ``true-fisher``: per layer (F_s,ll + λI)⁻¹g_l against
    (F_t,ll + λI)⁻¹g_l, and the network (F_s + λI)⁻¹g against (F_t + λI)⁻¹g."""
    head = _exact_head(true, CROSS_VARIANT, damping)
    rows = []
    for slot in true.slots:
        mine = true.layers[damping][slot.name]
        d = sampled.layers[damping][slot.name].direction
        metrics = direction_metrics(
            d, mine.direction, slot.take(true.g), lambda x, s=slot: true.energy(x, s)
        )
        rows.append(
            {
                **head,
                "layer": slot.name,
                "params": slot.size,
                **error_columns(errors[slot.name]),
                **metrics,
                **solve_columns(mine),
            }
        )
    mine = true.network[damping]
    d = sampled.network[damping].direction
    metrics = direction_metrics(d, mine.direction, true.g, lambda x: true.energy(x, None))
    rows.append(
        {
            **head,
            "layer": NETWORK,
            "params": int(true.g.numel()),
            **error_columns(errors[NETWORK]),
            **metrics,
            **solve_columns(mine),
        }
    )
    return rows
