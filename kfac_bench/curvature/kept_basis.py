"""The eigen mode's step through the eigenvectors whose eigenvalues were kept (exact, fewer FLOPs).

The ``eigen`` damping mode (:mod:`kfac_bench.curvature.inverse`) zeroes every eigenvalue ≤ τ
(openai/baselines ``kfac_utils.py`` ``detectMinVal``/``clipoutNeg``) and preconditions
M (C, K) as

    Δ = Q_G [(Q_Gᵀ M Q_A) ⊙ R] Q_Aᵀ,   R_ij = 1 / (d_G,i d_A,j + λ),

four products with the full (C², K²) eigenbases. Where d_G,i = 0 or d_A,j = 0, R_ij is 1/λ,
and Q_G Q_Gᵀ = I, Q_A Q_Aᵀ = I, so with P the p eigenvectors of G and S the r of A whose
eigenvalues were kept,

    Δ = M / λ + Q_P [(Q_Pᵀ M Q_S) ⊙ (R_PS − 1/λ)] Q_Sᵀ,   R_PS − 1/λ = −d d' / (λ (d d' + λ)),

(d d' = d_G,i d_A,j over P × S): the same Δ, through (C, p) and (K, r) bases.

On real Atari frames (``kfac-bench train --env BreakoutNoFrameskip-v4``, ``atari-tuned``,
updates.csv ``diag/trunk.7/A_clipped``) the Nature fc's 3137² A factor had 1 952 eigenvalues
≤ τ = 10⁻⁶ at its first decomposition and 1 263–1 329 from 90k to 160k steps, where the count
had levelled off: the four products fall to 0.39, then ~0.60, of their FLOPs. MinAtar's 1025² fc
factor (``minatar-tuned``): 0.71 at 40k steps, 0.80 at 120k. :func:`worthwhile` takes the kept
path only when its FLOPs are at most :data:`GAIN` of the full path's, so a layer with few
clipped eigenvalues keeps the four full products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: the kept path only when its products are at most this fraction of the full path's FLOPs.
#: Measured (AMD EPYC VM, two threads): no slower than the full path at 0.8–0.95 of its FLOPs
#: (MinAtar's fc 4.9 vs 5.1 ms at 0.80; the Nature fc 165 vs 176 ms at 0.82), 2.0–2.4× faster
#: at 0.60 and 0.39 (tests/benchmarks/test_bench_precondition.py); 0.9 leaves a margin.
GAIN = 0.9


def full_flops(c: int, k: int) -> int:
    """Multiply-adds of Q_G [(Q_Gᵀ M Q_A) ⊙ R] Q_Aᵀ for M (c, k)."""
    return 2 * (c * c * k + c * k * k)


def kept_flops(c: int, k: int, p: int, r: int) -> int:
    """Multiply-adds of the kept path (module docstring) with p kept of c, r kept of k."""
    return p * c * k + p * k * r + c * p * r + c * r * k


def worthwhile(c: int, k: int, p: int, r: int) -> bool:
    """Whether the kept path is cheap enough (:data:`GAIN`) to replace the full one."""
    return kept_flops(c, k, p, r) <= GAIN * full_flops(c, k)


@dataclass(frozen=True)
class KeptBasis:
    """The kept eigenvectors of one (A, G) pair and the correction to 1/λ on their block.

    Shapes: ``g`` (C, p), ``a`` (K, r), ``correction`` (p, r) = R_PS − 1/λ (module docstring).
    """

    g: torch.Tensor
    a: torch.Tensor
    correction: torch.Tensor
    damping: float

    @classmethod
    def of(
        cls,
        g_vecs: torch.Tensor,
        g_vals: torch.Tensor,
        a_vecs: torch.Tensor,
        a_vals: torch.Tensor,
        damping: float,
    ) -> KeptBasis | None:
        """The kept basis of a decomposition whose clipped eigenvalues are exactly 0, or None
        when the kept path is not :func:`worthwhile` (or nothing at all is kept)."""
        g_kept = torch.nonzero(g_vals).flatten()
        a_kept = torch.nonzero(a_vals).flatten()
        c, k, p, r = g_vals.numel(), a_vals.numel(), g_kept.numel(), a_kept.numel()
        if p == 0 or r == 0 or not worthwhile(c, k, p, r):
            return None
        product = g_vals[g_kept, None] * a_vals[None, a_kept]
        correction = -product / (damping * (product + damping))
        return cls(g_vecs[:, g_kept], a_vecs[:, a_kept], correction, damping)

    def apply(self, m: torch.Tensor) -> torch.Tensor:
        """Δ (C, K) for M (C, K): M/λ + Q_P [(Q_Pᵀ M Q_S) ⊙ correction] Q_Sᵀ."""
        v = (self.g.T @ m @ self.a).mul_(self.correction)
        return torch.addmm(m, self.g @ v, self.a.T, beta=1.0 / self.damping)
