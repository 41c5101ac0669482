"""Small pure functions: block errors (dense and probe estimates) and direction comparisons.

Block error (per layer, and for the whole network with the block-diagonal F̃):

    e = ‖F − F̃‖_F / ‖F‖_F

- dense, when the block has at most ``dense_limit`` entries: both matrices formed;
- probes otherwise (Hutchinson 1989 style): ‖X‖²_F = E_v ‖X v‖² for any v with E[v vᵀ] = I.
  We use Rademacher v (lower variance than Gaussian for the same mean: Var ‖Xv‖² is
  2(‖XᵀX‖²_F − Σ_i (XᵀX)²_ii) instead of 2‖XᵀX‖²_F). With S probes the numerator is the sample
  mean of ‖(F − F̃)v_s‖² (standard error from the sample), the denominator the exact ‖F‖²_F
  when available (Gram form) or the same probes' mean ‖F v_s‖².

Directions (d* the exact damped natural gradient, d the variant's, g the training gradient):
cosine ⟨d, d*⟩/(‖d‖‖d*‖), norm ratio ‖d‖/‖d*‖, predicted KL of the unit step ½ dᵀ F d with the
exact F (the quadratic model of the KL, Martens & Grosse 2015 §6.4 / ACKTR's trust region), and
the KL the trainer's trust region assumes for d, ½⟨d, g⟩ (= ½ dᵀ F̃ d when F̃ d = g).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockError:
    """Relative Frobenius error; ``se`` is its standard error (0 when dense)."""

    value: float
    se: float
    method: str  # "dense" | "probes"
    probes: int


def dense_relative_error(exact: torch.Tensor, approx: torch.Tensor) -> BlockError:
    """‖exact − approx‖_F / ‖exact‖_F for two formed matrices."""
    ref = float(exact.norm())
    value = float((exact - approx).norm()) / ref if ref > 0 else math.nan
    return BlockError(value, 0.0, "dense", 0)


def rademacher(
    count: int, dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(count, dim) independent ±1 entries (E[v vᵀ] = I)."""
    bits = torch.randint(0, 2, (count, dim), generator=generator, dtype=torch.int8)
    return (2.0 * bits.to(dtype) - 1.0).to(device)


def probe_relative_error(
    exact_products: torch.Tensor, approx_products: torch.Tensor, exact_frobenius_sq: float | None
) -> BlockError:
    """Estimate ‖F − F̃‖_F / ‖F‖_F from F V and F̃ V on the same S probes (rows of V)."""
    diff = (exact_products - approx_products).pow(2).sum(-1)  # (S,) ‖(F − F̃)v_s‖²
    count = diff.shape[0]
    mean = float(diff.mean())
    se_mean = float(diff.std()) / math.sqrt(count) if count > 1 else math.nan
    ref = exact_frobenius_sq
    if ref is None:
        ref = float(exact_products.pow(2).sum(-1).mean())
    if ref <= 0:
        return BlockError(math.nan, math.nan, "probes", count)
    value = math.sqrt(mean / ref)
    se = value * se_mean / (2 * mean) if mean > 0 else 0.0
    return BlockError(value, se, "probes", count)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩/(‖a‖‖b‖), clipped to [−1, 1] (rounding can step past ±1 for parallel vectors)."""
    denom = float(a.norm() * b.norm())
    return min(1.0, max(-1.0, float(a @ b) / denom)) if denom > 0 else math.nan


def norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a‖ / ‖b‖."""
    ref = float(b.norm())
    return float(a.norm()) / ref if ref > 0 else math.nan


def direction_metrics(
    d: torch.Tensor,
    d_exact: torch.Tensor,
    g: torch.Tensor,
    energy: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Compare a variant's direction d with the exact d*; ``energy(x) = xᵀ F x`` (exact F)."""
    return {
        "cosine": cosine(d, d_exact),
        "norm_ratio": norm_ratio(d, d_exact),
        "kl_exact_direction": 0.5 * float(energy(d_exact)),
        "kl_variant_direction": 0.5 * float(energy(d)),
        "kl_kfac_model": 0.5 * float(d @ g),
    }
