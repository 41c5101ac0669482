"""The training loss's backward with the Fisher pass's patch rows reused for the weight gradients.

A K-FAC update runs two backward passes through the same forward: the Fisher loss's (to the layer
outputs, for G) and the training loss's (to the parameters). The factor statistic of the first has
already written every layer's im2col patch rows ā (``adapters.LayerBatch.patch_rows``, kept per
layer in the optimizer's workspace), and a layer's weight gradient is a product with exactly
those rows:

    [∂L/∂W, ∂L/∂b] = Σ_{n,t} g_{n,t} ā_{n,t}ᵀ = gradient_rowsᵀ · patch_rows      (C_out, K[+1])

with g = ∂L/∂(layer output) of the batch-mean training loss and ā's last coordinate the
homogeneous 1, so the bias gradient is the last column. :func:`backward_reusing_patches` asks
autograd for g at every recorded output (and for the plain gradient of every other parameter), so
autograd computes no weight gradient of its own, and forms each layer's with one GEMM. The saving
is the convolution weight-gradient kernel: on the 2-core CI machine oneDNN's for the Nature CNN's
conv1 (B = 640, 4→32 channels, 8×8 stride 4) takes ~100 ms against ~27 ms for the GEMM over the
rows the statistic built anyway (issue 16, "reuse the patch matrix"). The result is the gradient
``loss.backward()`` computes, to float rounding (``tests/test_weight_grad.py``). A convolution
whose Ω came from its input's stride cells has no patch rows; its weight gradient is then a few
products with those cells instead (``cell_moment.cell_weight_gradient``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from kfac_bench.curvature import cell_moment
from kfac_bench.curvature.adapters import LayerBatch


@dataclass(frozen=True)
class RecordedLayer:
    """One layer of a Fisher pass: the module, its output in the graph, and its batch whose patch
    rows the statistic built (or will build on first use)."""

    module: nn.Module
    output: torch.Tensor
    batch: LayerBatch


def gradient_rows(module: nn.Module, grad_output: torch.Tensor) -> torch.Tensor:
    """(B·T, C_out) rows of ∂L/∂output in the patch rows' order (example-major, then position).

    Conv2d: grad_output (B, C_out, Oh, Ow) → rows (B·Oh·Ow, C_out) (one copy); Linear:
    (B, ..., C_out) → (B·..., C_out), a view."""
    if isinstance(module, nn.Conv2d):
        return grad_output.permute(0, 2, 3, 1).reshape(-1, grad_output.shape[1])
    return grad_output.reshape(-1, grad_output.shape[-1])


def _accumulate(param: nn.Parameter, grad: torch.Tensor) -> None:
    """``param.grad += grad`` (or set it), as ``loss.backward()`` accumulates."""
    grad = grad.reshape(param.shape).to(param.dtype)
    if param.grad is None:
        param.grad = grad.contiguous()
    else:
        param.grad.add_(grad)


def backward_reusing_patches(
    loss: torch.Tensor, layers: dict[str, RecordedLayer], params: Iterable[nn.Parameter]
) -> None:
    """Accumulate ∂loss/∂θ into ``.grad`` for the recorded layers' weights and biases (from their
    patch rows, module docstring) and for the other ``params`` that require grad (autograd);
    frees the graph as backward does.

    A layer or parameter the loss does not reach keeps its ``.grad`` untouched, as with
    ``loss.backward()``."""
    in_layers = {id(p) for layer in layers.values() for p in layer.module.parameters()}
    others = [p for p in params if p.requires_grad and id(p) not in in_layers]
    names = list(layers)
    outputs = [layers[name].output for name in names]
    grads = torch.autograd.grad(loss, [*outputs, *others], allow_unused=True)
    for name, grad_output in zip(names, grads[: len(names)]):
        if grad_output is None:
            continue
        module, batch = layers[name].module, layers[name].batch
        has_bias = module.bias is not None
        if batch.cell_rows is not None and not batch.has_patch_rows:
            full = cell_moment.cell_weight_gradient(batch, grad_output)  # (C_out, K+1)
        else:
            rows = batch.patch_rows(homogeneous=has_bias)
            full = gradient_rows(module, grad_output).T @ rows  # (C_out, K[+1])
        k = batch.in_features
        _accumulate(module.weight, full[:, :k])
        if has_bias:
            _accumulate(module.bias, full[:, k])
    for param, grad in zip(others, grads[len(names) :]):
        if grad is not None:
            _accumulate(param, grad)
