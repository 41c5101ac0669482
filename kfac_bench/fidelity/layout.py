"""Parameter layout shared by the exact Fisher and the K-FAC blocks ("M order").

Every quantity of the fidelity measurement (per-example gradients, the training-loss gradient,
directions, probe vectors) is one flat vector over the K-FAC-covered parameters, laid out layer
by layer (``find_layers`` order) in the layout K-FAC itself uses (DESIGN.md §2,
``curvature/inverse.py``): for a layer with weight W (C_out, K) (``weight.view(C_out, -1)``, conv
patches in ``(C_in, kh, kw)`` order) and bias b (C_out,), the layer's slice is the row-major
``vec(M)`` of

    M = [W | b]      shape (C_out, K + 1)   (bias column last; (C_out, K) without a bias)

In this order the homogeneous variants' Fisher block is ``kron(G, A)`` with no permutation
(row-major vec: ``kron(G, A) vec(M) = vec(G M Aᵀ)``), which is what makes the exact and the
approximate blocks directly comparable entry by entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kfac_bench.curvature.optimizer import find_layers


@dataclass(frozen=True)
class LayerSlot:
    """One K-FAC layer's place in the flat vector.

    ``name`` is the layer's K-FAC name (``find_layers`` on the K-FAC module, as in the trainer's
    ``diag/<name>/...`` columns); ``weight_key``/``bias_key`` are the parameter names inside the
    whole policy (what ``functional_call`` takes).
    """

    name: str
    module: nn.Module
    weight_key: str
    bias_key: str | None
    c_out: int
    k: int  # weight[0].numel(): in_features or C_in·kh·kw
    start: int

    @property
    def has_bias(self) -> bool:
        return self.bias_key is not None

    @property
    def cols(self) -> int:
        """Columns of M: K + 1 with a bias, K without."""
        return self.k + int(self.has_bias)

    @property
    def size(self) -> int:
        return self.c_out * self.cols

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.weight_key,) if self.bias_key is None else (self.weight_key, self.bias_key)

    def take(self, flat: torch.Tensor) -> torch.Tensor:
        """(..., P) -> this layer's slice (..., C_out·cols)."""
        return flat[..., self.start : self.stop]

    def matrix(self, flat_slice: torch.Tensor) -> torch.Tensor:
        """(..., C_out·cols) -> M (..., C_out, cols)."""
        return flat_slice.reshape(*flat_slice.shape[:-1], self.c_out, self.cols)


def kfac_root(policy: nn.Module) -> nn.Module:
    """What K-FAC preconditions: ``policy.kfac_module()`` when the policy has one, else itself."""
    getter = getattr(policy, "kfac_module", None)
    return getter() if callable(getter) else policy


def build_slots(policy: nn.Module) -> list[LayerSlot]:
    """The K-FAC layers of ``policy`` in ``find_layers`` order with their flat offsets.

    Raises ValueError when the K-FAC module has trainable parameters outside Linear/Conv2d
    (the exact Fisher would then cover parameters K-FAC does not precondition), other than a
    Gaussian policy's log σ, which K-FAC does not precondition and the comparison leaves out.
    """
    root = kfac_root(policy)
    layers, others = find_layers(root)
    log_std = getattr(policy, "log_std_parameter", None)
    # a Gaussian's log σ is not a K-FAC layer: stepped by its own diagonal Fisher or by SGD
    others = [n for n, p in root.named_parameters() if n in others and p is not log_std]
    if others:
        raise ValueError(
            f"fidelity covers Linear/Conv2d layers only; other parameters: {', '.join(others)}"
        )
    full_names = {id(m): n for n, m in policy.named_modules()}
    slots, start = [], 0
    for name, module in layers.items():
        prefix = full_names[id(module)]
        prefix = f"{prefix}." if prefix else ""
        c_out = module.weight.shape[0]
        k = math.prod(module.weight.shape[1:])
        bias = f"{prefix}bias" if module.bias is not None else None
        slot = LayerSlot(name, module, f"{prefix}weight", bias, c_out, k, start)
        slots.append(slot)
        start = slot.stop
    return slots


def total_size(slots: list[LayerSlot]) -> int:
    return slots[-1].stop if slots else 0


def flatten(
    slots: list[LayerSlot], tensors: dict[str, torch.Tensor], lead: int = 0
) -> torch.Tensor:
    """Parameter-shaped tensors -> flat M order.

    ``tensors[key]`` has shape (*L, *param.shape) with ``lead = len(L)`` leading dimensions
    (e.g. L = (B,) for per-example gradients); the result is (*L, P).
    """
    parts = []
    for slot in slots:
        weight = tensors[slot.weight_key]
        dims = weight.shape[:lead]
        m = weight.reshape(*dims, slot.c_out, slot.k)
        if slot.bias_key is not None:
            m = torch.cat([m, tensors[slot.bias_key].reshape(*dims, slot.c_out, 1)], dim=-1)
        parts.append(m.reshape(*dims, slot.size))
    return torch.cat(parts, dim=-1)


def unflatten(slots: list[LayerSlot], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flat (P,) in M order -> parameter-shaped tensors keyed like ``named_parameters``."""
    out: dict[str, torch.Tensor] = {}
    for slot in slots:
        m = slot.matrix(slot.take(flat))
        out[slot.weight_key] = m[:, : slot.k].reshape(slot.module.weight.shape)
        if slot.bias_key is not None:
            out[slot.bias_key] = m[:, slot.k]
    return out


def kfac_parameters(policy: nn.Module, slots: list[LayerSlot]) -> dict[str, torch.Tensor]:
    """The covered parameters (detached) keyed by their full names."""
    named = dict(policy.named_parameters())
    return {key: named[key].detach() for slot in slots for key in slot.keys}
