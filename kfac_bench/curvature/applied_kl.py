"""The quadratic model's KL of the step ``KFAC`` applied (``KFAC.applied_step_kl``).

    KL ≈ ½·Δθᵀ F̃ Δθ,   per layer ⟨ΔW, G·ΔW·A⟩ = vec(ΔW)ᵀ (A ⊗ G) vec(ΔW)   (undamped)

with Δθ_p = −scale·update as applied (momentum buffer, or the cold SGD buffer) and F̃ the
block-diagonal Kronecker Fisher of the running factors (the second-order model of the KL in
Martens & Grosse 2015; openai/baselines ``acktr/kfac.py`` bounds the same quadratic form).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kfac_bench.curvature.layer_state import LayerState

# the last applied step per parameter: (update, scale), Δθ_p = −scale·update
Applied = dict[nn.Parameter, tuple[torch.Tensor, float]]


@torch.no_grad()
def applied_step_kl(
    layers: Iterable[LayerState],
    applied: Applied,
    exact_diagonal: dict[nn.Parameter, float],
    dtype: torch.dtype,
    params: set[nn.Parameter] | None = None,
) -> torch.Tensor:
    """½·Δθᵀ F̃ Δθ of the step in ``applied``, over the layers whose weight is in ``params`` (all
    layers when None). F̃ per layer: A ⊗ G of the running factors, with the bias in A's homogeneous
    coordinate, or, for a separate bias block, Δbᵀ·bias_G·Δb; under ekfac F̃ is the EKFAC
    curvature Q diag(s) Qᵀ in use (``LayerState.curvature_quadratic``). An ``exact_diagonal``
    parameter adds F·‖Δθ‖² (when in ``params``; ``dtype`` is the layers' dtype); the other
    parameters outside Linear/Conv2d have no curvature estimate and are left out. A 0-d CPU
    tensor; nan before any statistics."""
    total: torch.Tensor | float = 0.0
    for layer in layers:
        weight, bias = layer.module.weight, layer.module.bias
        if params is not None and weight not in params:
            continue
        if layer.A.value is None or weight not in applied:
            return torch.full((), math.nan)
        d_w = _applied_delta(applied, weight, layer.dtype).reshape(weight.shape[0], -1)
        d_b = None if bias is None else _applied_delta(applied, bias, layer.dtype)
        total = total + layer.curvature_quadratic(d_w, d_b)
    for p, fisher in exact_diagonal.items():
        if (params is None or p in params) and p in applied:
            total = total + fisher * _applied_delta(applied, p, dtype).pow(2).sum()
    return 0.5 * torch.as_tensor(total).cpu()


def _applied_delta(applied: Applied, p: nn.Parameter, dtype: torch.dtype) -> torch.Tensor:
    update, scale = applied[p]
    return (update * scale).to(dtype)
