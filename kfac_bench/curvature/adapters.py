"""Layer geometry: one adapter per layer type turns (input, grad_output) into canonical form.

Canonical form (:class:`LayerBatch`), with B examples and T positions per example:

- ``patches`` (B, T, K): the input seen by each output position. Linear: T = 1 (or the product of
  any middle dimensions), K = in_features. Conv2d: T = Oh·Ow, K = C_in·kh·kw in PyTorch weight
  order ``(C_in, kh, kw)``, matching ``weight.view(C_out, -1)`` (im2col via ``F.unfold``).
- ``derivs`` (B, T, C_out): per-example derivatives ĝ = B · grad_output, where ``grad_output`` is
  the gradient of a batch-**mean** loss at the layer output (DESIGN.md §2).

No statistic lives here (backpack style): the variants turn a LayerBatch into factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedLayerError(ValueError):
    """A layer K-FAC cannot precondition; the message names the layer and the reason."""


@dataclass(frozen=True)
class LayerBatch:
    patches: torch.Tensor  # (B, T, K)
    derivs: torch.Tensor  # (B, T, C_out)
    has_bias: bool

    @property
    def batch_size(self) -> int:
        return self.patches.shape[0]

    @property
    def positions(self) -> int:
        return self.patches.shape[1]


def linear_batch(
    module: nn.Linear, layer_input: torch.Tensor, grad_output: torch.Tensor
) -> LayerBatch:
    """Linear: input (B, ..., K), grad_output (B, ..., C_out); middle dims become positions."""
    batch = layer_input.shape[0]
    patches = layer_input.reshape(batch, -1, module.in_features)
    derivs = grad_output.reshape(batch, -1, module.out_features) * batch
    return LayerBatch(patches, derivs, module.bias is not None)


def conv2d_batch(
    module: nn.Conv2d, layer_input: torch.Tensor, grad_output: torch.Tensor
) -> LayerBatch:
    """Conv2d: input (B, C_in, H, W), grad_output (B, C_out, Oh, Ow) -> patches (B, Oh·Ow, K)."""
    check_conv2d(module)
    batch = layer_input.shape[0]
    columns = F.unfold(
        layer_input,
        kernel_size=module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )  # (B, K, T), K ordered (C_in, kh, kw)
    patches = columns.transpose(1, 2)
    derivs = grad_output.reshape(batch, module.out_channels, -1).transpose(1, 2) * batch
    if patches.shape[1] != derivs.shape[1]:
        raise UnsupportedLayerError(
            f"conv layer {module}: {patches.shape[1]} input patches vs {derivs.shape[1]} outputs"
        )
    return LayerBatch(patches, derivs, module.bias is not None)


def check_conv2d(module: nn.Conv2d) -> None:
    """Raise UnsupportedLayerError for Conv2d settings whose patches are not plain im2col."""
    if module.groups != 1:
        raise UnsupportedLayerError(f"{module}: grouped convolutions (groups={module.groups})")
    if module.padding_mode != "zeros":
        raise UnsupportedLayerError(f"{module}: padding_mode={module.padding_mode!r} (only zeros)")
    if isinstance(module.padding, str):
        raise UnsupportedLayerError(f"{module}: string padding {module.padding!r}; use integers")


ADAPTERS = {nn.Linear: linear_batch, nn.Conv2d: conv2d_batch}


def is_supported(module: nn.Module) -> bool:
    return type(module) in ADAPTERS


def layer_batch(
    module: nn.Module, layer_input: torch.Tensor, grad_output: torch.Tensor
) -> LayerBatch:
    """Dispatch to the adapter for ``type(module)``; other types raise UnsupportedLayerError."""
    adapter = ADAPTERS.get(type(module))
    if adapter is None:
        names = ", ".join(t.__name__ for t in ADAPTERS)
        raise UnsupportedLayerError(
            f"K-FAC has no adapter for {type(module).__name__}; supported: {names}"
        )
    return adapter(module, layer_input, grad_output)
