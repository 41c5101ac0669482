"""Damped solves (F + λI)⁻¹ g with the exact Fisher operators of ``exact.py``.

- :func:`conjugate_gradient` / :func:`damped_solve`: CG with exact Fisher-vector products (any
  operator; large networks, where the row Jacobian is not stored);
- :func:`row_space_solve`: exact, through the N × N row Gram matrix (Woodbury), when it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kfac_bench.fidelity.exact import FisherOperator, JacobianFisher
    from kfac_bench.fidelity.layout import LayerSlot


@dataclass(frozen=True)
class CgResult:
    """x ≈ A⁻¹ b; ``residual`` is the true ‖b − A x‖ / ‖b‖ recomputed at the end."""

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 1000,
    deadline: float | None = None,
) -> CgResult:
    """Solve A x = b for symmetric positive definite A given by ``matvec`` (Hestenes–Stiefel).

    Stops when ‖r‖ ≤ tol·‖b‖, after ``max_iter`` iterations, or when ``time.monotonic()``
    passes ``deadline``. For A = F + λI with rank(F) ≤ B it terminates in at most B + 1 steps in
    exact arithmetic (the Krylov space of a rank-B update of a multiple of I).
    """
    x = torch.zeros_like(b)
    b_norm = float(b.norm())
    if b_norm == 0.0:
        return CgResult(x, 0, 0.0, True)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (reported)
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        if float(rr_new.sqrt()) <= tol * b_norm:
            break
        if deadline is not None and time.monotonic() > deadline:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    residual = float((b - matvec(x)).norm()) / b_norm
    return CgResult(x, iterations, residual, residual <= 10 * tol)


def damped_solve(
    operator: FisherOperator,
    g: torch.Tensor,
    damping: float,
    slot: LayerSlot | None = None,
    **cg_options,
) -> CgResult:
    """(F + λI)⁻¹ g by CG with exact Fisher-vector products (F_ll for one ``slot``)."""
    return conjugate_gradient(lambda v: operator.mv(v, slot) + damping * v, g, **cg_options)


def row_space_solve(
    operator: JacobianFisher, g: torch.Tensor, damping: float, slot: LayerSlot | None = None
) -> CgResult:
    """(F + λI)⁻¹ g exactly, in the N-dimensional row space (Woodbury identity).

    With F = JᵀJ/B (J: N × P): (λI + JᵀJ/B)⁻¹ g = (g − Jᵀ y)/λ, y = (JJᵀ/B + λI)⁻¹ (J g)/B
    (Woodbury; Petersen & Pedersen, *The Matrix Cookbook*, eq. 159). One N × N Cholesky solve;
    ``iterations`` is 0 and ``residual`` the true ‖g − (F + λI)x‖/‖g‖.
    """
    b = operator.batch
    gram = operator.gram(slot) / b
    gram = gram + damping * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    y = torch.linalg.solve(gram, operator.jv(g, slot) / b)
    x = (g - operator.jtu(y, slot)) / damping
    g_norm = float(g.norm())
    if g_norm == 0.0:
        return CgResult(x, 0, 0.0, True)
    residual = float((g - operator.mv(x, slot) - damping * x).norm()) / g_norm
    return CgResult(x, 0, residual, True)
