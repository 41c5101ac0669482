"""Damping and inversion of one layer's Kronecker factors (DESIGN.md §3, ``kfac.damping_mode``).

Gradient layout (PyTorch): M = ∇W as (C_out, K[+1]), bias column last when folded into A.

- ``eigen`` (baselines, ikostrikov, KFAC-PyTorch, ACKTR-PyTorch): A = Q_A d_A Q_Aᵀ, G = Q_G d_G Q_Gᵀ,
  eigenvalues ≤ τ zeroed per factor, then  Δ = Q_G [(Q_Gᵀ M Q_A) ⊘ (d_G d_Aᵀ + λ)] Q_Aᵀ,
  which is (A⊗G + λI)⁻¹ vec(M) when nothing is clipped.
  (openai/baselines ``baselines/acktr/kfac.py`` lines 678-736; kfac_utils.py ``detectMinVal``)
- ``tikhonov`` (seed notebook, gpauloski INVERSE): Δ = (G + γI)⁻¹ M (A + γI)⁻¹, γ per factor
  (default √λ), inverses through Cholesky.
- ``tikhonov-pi`` (Martens & Grosse 2015 §6.3): π = sqrt((tr A/dim A)/(tr G/dim G)),
  Δ = (G + (√λ/π) I)⁻¹ M (A + π√λ I)⁻¹.

A separate bias block (``bias_G``, with A_b = 1) is treated as a Kronecker product with the 1×1
factor [1], so all three modes apply to it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kfac_bench.config import KfacConfig


class FactorInverseError(RuntimeError):
    """A decomposition failed (non-finite factor, not positive definite after damping)."""


@dataclass
class FactorPairInverse:
    """What ``apply`` needs for one (A, G) pair, plus diagnostics from the decomposition.

    eigen: ``a``/``g`` hold eigenvectors, ``a_vals``/``g_vals`` clipped eigenvalues.
    tikhonov*: ``a``/``g`` hold the damped inverses (``a_vals``/``g_vals`` unused).
    """

    mode: str
    a: torch.Tensor
    g: torch.Tensor
    a_vals: torch.Tensor | None
    g_vals: torch.Tensor | None
    damping: float
    diagnostics: torch.Tensor  # (6,) A_trace, G_trace, A_cond, G_cond, A_clipped, G_clipped

    def apply(self, m: torch.Tensor) -> torch.Tensor:
        """Precondition M (C_out, K) -> Δ (C_out, K) in the factors' dtype."""
        if self.mode == "eigen":
            v = self.g.T @ m @ self.a
            v = v / (self.g_vals[:, None] * self.a_vals[None, :] + self.damping)
            return self.g @ v @ self.a.T
        return self.g @ m @ self.a

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "a": self.a,
            "g": self.g,
            "a_vals": self.a_vals,
            "g_vals": self.g_vals,
            "damping": self.damping,
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> FactorPairInverse:
        return cls(**state)


def _eigh(matrix: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return torch.linalg.eigh(matrix)
    except RuntimeError as error:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise FactorInverseError(f"eigendecomposition of {what} failed: {error}") from error


def _damped_inverse(matrix: torch.Tensor, shift: float, what: str) -> torch.Tensor:
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    chol, info = torch.linalg.cholesky_ex(matrix + shift * eye)
    if int(info) != 0:
        raise FactorInverseError(
            f"{what} + {shift:g}·I is not positive definite (Cholesky failed at minor {int(info)})"
        )
    return torch.cholesky_inverse(chol)


def _condition(eigenvalues: torch.Tensor) -> torch.Tensor:
    top = eigenvalues.max()
    return top / eigenvalues.min().clamp_min(torch.finfo(eigenvalues.dtype).tiny)


def invert_pair(
    a: torch.Tensor, g: torch.Tensor, config: KfacConfig, what: str
) -> FactorPairInverse:
    """Decompose one Kronecker pair (A: K², G: C²) under ``config.damping_mode``."""
    lam = config.damping
    traces = torch.stack([torch.trace(a), torch.trace(g)])
    if config.damping_mode == "eigen":
        a_vals, a_vecs = _eigh(a, f"A of {what}")
        g_vals, g_vecs = _eigh(g, f"G of {what}")
        a_keep = a_vals > config.eigen_clip
        g_keep = g_vals > config.eigen_clip
        diagnostics = torch.cat(
            [
                traces,
                torch.stack([_condition(a_vals), _condition(g_vals)]),
                torch.stack([(~a_keep).sum(), (~g_keep).sum()]).to(a.dtype),
            ]
        )
        return FactorPairInverse(
            "eigen", a_vecs, g_vecs, a_vals * a_keep, g_vals * g_keep, lam, diagnostics
        )
    if config.damping_mode == "tikhonov":
        gamma = config.factor_damping if config.factor_damping is not None else math.sqrt(lam)
        a_shift = g_shift = gamma
    else:  # tikhonov-pi
        a_mean = traces[0] / a.shape[0]
        g_mean = traces[1] / g.shape[0]
        tiny = torch.finfo(a.dtype).tiny
        pi = float(torch.sqrt(a_mean.clamp_min(tiny) / g_mean.clamp_min(tiny)))
        a_shift, g_shift = pi * math.sqrt(lam), math.sqrt(lam) / pi
    nan = torch.full((2,), float("nan"), dtype=a.dtype, device=a.device)
    zeros = torch.zeros(2, dtype=a.dtype, device=a.device)
    return FactorPairInverse(
        config.damping_mode,
        _damped_inverse(a, a_shift, f"A of {what}"),
        _damped_inverse(g, g_shift, f"G of {what}"),
        None,
        None,
        lam,
        torch.cat([traces, nan, zeros]),
    )
