"""The quadratic model's KL of the step a :class:`~kfac_bench.curvature.optimizer.KFAC` applied.

    KL ≈ ½·Δθᵀ F̃ Δθ,   per layer ⟨ΔW, G·ΔW·A⟩ = vec(ΔW)ᵀ (A ⊗ G) vec(ΔW)   (undamped)

with Δθ_p = −scale·update as applied (momentum buffer, or the cold SGD buffer) and F̃ the
block-diagonal Kronecker Fisher of the running factors (the second-order model of the KL in
Martens & Grosse 2015; openai/baselines ``acktr/kfac.py`` bounds the same quadratic form).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from kfac_bench.curvature.optimizer import KFAC


@torch.no_grad()
def applied_step_kl(kfac: KFAC, params: set[nn.Parameter] | None = None) -> torch.Tensor:
    """½·Δθᵀ F̃ Δθ of ``kfac``'s last step, over the layers whose weight is in ``params`` (all
    layers when None). F̃ per layer: A ⊗ G of the running factors, with the bias in A's homogeneous
    coordinate, or, for a separate bias block, Δbᵀ·bias_G·Δb; under ekfac F̃ is the EKFAC
    curvature Q diag(s) Qᵀ in use (``LayerState.curvature_quadratic``). An ``exact_diagonal``
    parameter adds F·‖Δθ‖² (when in ``params``); the other parameters outside Linear/Conv2d have
    no curvature estimate and are left out. A 0-d CPU tensor; nan before any statistics."""
    total: torch.Tensor | float = 0.0
    for layer in kfac.layers.values():
        weight, bias = layer.module.weight, layer.module.bias
        if params is not None and weight not in params:
            continue
        if layer.A.value is None or weight not in kfac._applied:
            return torch.full((), math.nan)
        d_w = _applied_delta(kfac, weight, layer.dtype).reshape(weight.shape[0], -1)
        d_b = None if bias is None else _applied_delta(kfac, bias, layer.dtype)
        total = total + layer.curvature_quadratic(d_w, d_b)
    for p, fisher in kfac.exact_diagonal.items():
        if (params is None or p in params) and p in kfac._applied:
            total = total + fisher * _applied_delta(kfac, p, kfac.layers_dtype).pow(2).sum()
    return 0.5 * torch.as_tensor(total).cpu()


def _applied_delta(kfac: KFAC, p: nn.Parameter, dtype: torch.dtype) -> torch.Tensor:
    update, scale = kfac._applied[p]
    return (update * scale).to(dtype)
