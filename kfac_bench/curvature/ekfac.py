"""EKFAC's scaling statistic: second moments of per-example gradients in the Kronecker eigenbasis.

Eigenvalue-corrected K-FAC (George et al. 2018, "Fast Approximate Natural Gradient Descent in a
Kronecker-factored Eigenbasis"; alecwangcq/KFAC-Pytorch ``optimizers/ekfac.py``
``EKFACOptimizer._update_scale``) keeps K-FAC's eigenbases Q_A (K'×K', K' = K[+1]) and Q_G (C×C)
but replaces the eigenvalue products d_G d_Aᵀ by the data's own second moments in that basis:

    s = E_n[(Q_Gᵀ ∇W_n Q_A)²]        (C, K'), squared entrywise

∇W_n is the **true** per-example gradient of the Fisher loss, whatever the variant's scaling of A
and G: for a conv layer under expand ∇W_n = Σ_t ĝ_{n,t} ā_{n,t}ᵀ with ĝ = B·grad_output and
ā = [a; 1] (1 last, unscaled), for Linear ∇W_n = ĝ_n ā_nᵀ. Eigenvectors do not change when a
factor is scaled, so the T² that ``baselines`` / ``kfac-pytorch`` move between A and G cannot
reach the EKFAC step (tests/test_ekfac.py checks it). ikostrikov's separate bias block has
∇b_n = Σ_t ĝ_{n,t} and the 1×1 basis Q_A = [1]: s_b = E_n[(Q_bᵀ ∇b_n)²] (C, 1).

Two routes compute s; :func:`choose_route` picks the one with fewer multiply-adds (both give the
same numbers; the tests run both against explicit loops):

- ``project-first``: P = ā Q_A (B·T, K'), R = ĝ Q_G (B·T, C), then Ṽ_n = Σ_t R_{n,t}ᵀ P_{n,t}
  (one batched GEMM). For T = 1 no per-example tensor is formed at all:
  s = (1/B) (R²)ᵀ (P²), one GEMM. Cost B·T·(K'² + C²) [+ B·T·C·K' when T > 1].
- ``per-example``: ∇W_n = Σ_t ĝ_{n,t} ā_{n,t}ᵀ (batched GEMM), then Q_Gᵀ ∇W_n Q_A.
  Cost B·T·C·K' + B·(C²·K' + C·K'²). Cheaper as soon as T is large: the two projections act on
  the B per-example C×K' matrices instead of the B·T patch rows (for the Nature CNN's conv1 at
  B = 640: 3.6 vs 19 G multiply-adds). KFAC-Pytorch always takes this route (``ComputeMatGrad``).

Either way the per-example tensor is (B, C, K'), never larger than the patch rows themselves.

One deliberate difference from KFAC-Pytorch (at 3dec464): its ``_update_scale`` squares
``Q_g @ grad_mat @ Q_a.t()`` while its preconditioner ``_get_natural_grad`` projects with
``Q_g.t() @ · @ Q_a``, so its s is measured in another basis than the one it divides in (equal only
for symmetric Q). Here both use Q_Gᵀ · Q_A, the eigenbasis of George et al.
"""

from __future__ import annotations

from typing import Literal

import torch

from kfac_bench.curvature.adapters import LayerBatch, Workspace, using_workspace

Route = Literal["auto", "project-first", "per-example"]


def route_costs(batch: int, positions: int, c_out: int, k: int) -> dict[str, int]:
    """Multiply-adds of each route for B = ``batch``, T = ``positions``, C, K' (docstring above)."""
    project = batch * positions * (k * k + c_out * c_out)
    if positions > 1:
        project += batch * positions * c_out * k
    per_example = batch * positions * c_out * k + batch * (c_out * c_out * k + c_out * k * k)
    return {"project-first": project, "per-example": per_example}


def choose_route(batch: int, positions: int, c_out: int, k: int) -> str:
    """The cheaper route (``project-first`` on ties, and always for T = 1)."""
    costs = route_costs(batch, positions, c_out, k)
    return "per-example" if costs["per-example"] < costs["project-first"] else "project-first"


def scale_statistic(
    batch: LayerBatch,
    q_a: torch.Tensor,
    q_g: torch.Tensor,
    homogeneous: bool,
    route: Route = "auto",
) -> torch.Tensor:
    """s = (1/B) Σ_n (Q_Gᵀ ∇W_n Q_A)², shape (C, K'), from one batch (no averaging).

    q_a: (K', K') eigenvectors of A (columns), K' = K + 1 when ``homogeneous`` (1 last);
    q_g: (C, C) eigenvectors of G. The batch's rows hold g = ĝ/B, so with V_n built from g the
    statistic is (1/B)·Σ_n (B·V_n)² = B·Σ_n V_n².
    """
    b, t = batch.batch_size, batch.positions
    c, k = q_g.shape[0], q_a.shape[0]
    if route == "auto":
        route = choose_route(b, t, c, k)
    dtype = q_a.dtype
    rows = batch.patch_rows(homogeneous).to(dtype)  # (B·T, K')
    grads = batch.grad_rows().to(dtype)  # (B·T, C), unscaled
    if route == "project-first":
        p = rows @ q_a  # (B·T, K')
        r = grads @ q_g  # (B·T, C)
        if t == 1:
            return torch.addmm(p.new_zeros(()), r.square().T, p.square(), beta=0.0, alpha=b)
        v = torch.bmm(r.view(b, t, c).transpose(1, 2), p.view(b, t, k))  # (B, C, K')
    else:
        per_example = torch.bmm(grads.view(b, t, c).transpose(1, 2), rows.reshape(b, t, k))
        v = q_g.T @ per_example @ q_a  # (B, C, K')
    return v.square_().sum(dim=0).mul_(b)


def bias_scale_statistic(batch: LayerBatch, q_b: torch.Tensor) -> torch.Tensor:
    """s_b = (1/B) Σ_n (Q_bᵀ Σ_t ĝ_{n,t})², shape (C, 1): the separate bias block in its basis.

    q_b: (C, C) eigenvectors of bias_G. Σ_t ĝ_{n,t} = B·Σ_t g_{n,t} is the true per-example bias
    gradient, so s_b = B·Σ_n (Q_bᵀ Σ_t g_{n,t})².
    """
    r = batch.grad_sums().to(q_b.dtype) @ q_b  # (B, C)
    return r.square_().sum(dim=0).mul_(batch.batch_size)[:, None]


def reset_scale(a_vals: torch.Tensor, g_vals: torch.Tensor) -> torch.Tensor:
    """s after a new basis: K-FAC's eigenvalue products d_G d_Aᵀ (C, K'), negatives (round-off)
    set to 0.

    The diagonal of the old basis cannot be carried into a new one (that would need the full
    second moment), so the estimate restarts from what the running factors say in the new basis,
    as KFAC-Pytorch does (``optimizers/ekfac.py`` ``_update_inv``: ``S_l = d_g d_aᵀ``, after
    zeroing eigenvalues ≤ 1e-10). No per-factor clipping τ here: a threshold per factor is what
    makes the T² split matter (DESIGN.md §3), and the product needs none.
    """
    return g_vals.clamp_min(0.0)[:, None] * a_vals.clamp_min(0.0)[None, :]


def fold_scale(scale: torch.Tensor, statistic: torch.Tensor, decay: float) -> None:
    """In place: s ← d·s + (1 − d)·statistic (KFAC-Pytorch ``update_running_stat``)."""
    scale.mul_(decay).add_(statistic.to(scale.dtype), alpha=1.0 - decay)


def fold_kept_passes(
    layers: dict,
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]],
    decay: float,
    workspace: Workspace,
) -> None:
    """Fold each layer's kept Fisher pass (input, grad_output) into its s (``LayerState.fold_scale``
    with ``decay``), then forget them: what ``KFAC.step`` does after refreshing the bases."""
    with using_workspace(workspace):
        for name, (layer_input, grad_output) in kept.items():
            layers[name].fold_scale(layer_input, grad_output, decay)
    kept.clear()
