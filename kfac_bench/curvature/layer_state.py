"""Per-layer K-FAC state: the running factors of one layer and its current decomposition.

:class:`LayerState` holds a layer's running averages of A and G (and the separate bias block
``bias_G`` of variants that keep one), folds each statistics pass into them, decomposes them
(:func:`kfac_bench.curvature.inverse.decompose_layer`) and preconditions the layer's gradient.
:func:`find_layers` decides which modules K-FAC preconditions. The optimizer that drives these
(statistics cadence, trust region, momentum, asynchronous inverses) is
:class:`kfac_bench.curvature.optimizer.KFAC`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from kfac_bench.config import KfacConfig
from kfac_bench.curvature.adapters import check_conv2d, is_supported, layer_batch
from kfac_bench.curvature.ekfac import bias_scale_statistic, fold_scale, scale_statistic
from kfac_bench.curvature.factors import Factors, InitRule
from kfac_bench.curvature.inverse import FactorPairInverse, LayerDecomposition, decompose_layer
from kfac_bench.curvature.running import RunningAverage


class KfacError(RuntimeError):
    """K-FAC cannot go on (non-finite factors, failed decomposition, misuse). One-line message."""


@dataclass(frozen=True)
class StepInfo:
    """What one step did. Tensors stay on device; read them with .item() at logging time only."""

    lr: float
    nu: torch.Tensor
    q: torch.Tensor
    predicted_kl: torch.Tensor
    cold: bool
    inverted: bool  # a new decomposition was put in use at this step
    staleness: int = 0  # updates between the statistics behind the decomposition and this step
    stats_staleness: int = 0  # Fisher batches taken but not yet in the factors (pipelined: 1)


class LayerState:
    """State of one preconditioned layer: running factors and the current decomposition."""

    def __init__(
        self, name: str, module: nn.Module, decay: float, init: InitRule, dtype: torch.dtype
    ):
        self.name = name
        self.module = module
        self.A = RunningAverage(decay, init, dtype)
        self.G = RunningAverage(decay, init, dtype)
        self.bias_G: RunningAverage | None = None
        self.decay, self.init, self.dtype = decay, init, dtype
        self.weights: FactorPairInverse | None = None
        self.bias: FactorPairInverse | None = None

    @property
    def homogeneous(self) -> bool:
        """Whether A carries the bias coordinate (A is (K+1)² instead of K²)."""
        k = self.module.weight[0].numel()
        return self.A.value is not None and self.A.value.shape[0] == k + 1

    def fold(self, factors: Factors) -> None:
        self.A.update(factors.A)
        self.G.update(factors.G)
        if factors.bias_G is not None:
            if self.bias_G is None:
                self.bias_G = RunningAverage(self.decay, self.init, self.dtype)
            self.bias_G.update(factors.bias_G)

    def check_structure(self) -> None:
        has_bias = self.module.bias is not None
        if has_bias and not self.homogeneous and self.bias_G is None:
            raise KfacError(
                f"layer {self.name!r} has a bias but the variant gave neither a homogeneous "
                "coordinate in A nor a bias_G block"
            )

    def invert(self, config: KfacConfig) -> None:
        bias_g = None if self.bias_G is None else self.bias_G.value
        self.install(decompose_layer(self.A.value, self.G.value, bias_g, config, self.name))

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Copies of (A, G, bias_G) for a background decomposition (the averages move on)."""
        bias_g = None if self.bias_G is None else self.bias_G.value.clone()
        return self.A.value.clone(), self.G.value.clone(), bias_g

    def install(self, decomposition: LayerDecomposition) -> None:
        self.weights, self.bias = decomposition

    def fold_scale(
        self, layer_input: torch.Tensor, grad_output: torch.Tensor, decay: float
    ) -> None:
        """ekfac: fold one Fisher pass's E_n[(Q_Gᵀ ∇W_n Q_A)²] into the decomposition in use
        (and s_b into the separate bias block's), ``curvature/ekfac.py``. ``grad_output`` is the
        gradient of the batch-mean Fisher loss at the layer output, as for the factors."""
        batch = layer_batch(self.module, layer_input, grad_output)
        w = self.weights
        fold_scale(w.scale, scale_statistic(batch, w.a, w.g, self.homogeneous), decay)
        if self.bias is not None:
            fold_scale(self.bias.scale, bias_scale_statistic(batch, self.bias.g), decay)

    def precondition(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, Δ) pairs for this layer's weight (and bias) from their .grad."""
        weight, bias = self.module.weight, self.module.bias
        grad_w = weight.grad.reshape(weight.shape[0], -1).to(self.dtype)
        if self.homogeneous:
            m = torch.cat([grad_w, bias.grad.to(self.dtype)[:, None]], dim=1)
            delta = self.weights.apply(m)
            return [
                (weight, delta[:, :-1].reshape(weight.shape)),
                (bias, delta[:, -1]),
            ]
        pairs = [(weight, self.weights.apply(grad_w).reshape(weight.shape))]
        if bias is not None:
            delta_b = self.bias.apply(bias.grad.to(self.dtype)[:, None])[:, 0]
            pairs.append((bias, delta_b))
        return pairs

    def curvature_quadratic(self, d_w: torch.Tensor, d_b: torch.Tensor | None) -> torch.Tensor:
        """δᵀ F̃ δ of this layer for weight change d_w (C, K) and bias change d_b (C,) or None.

        F̃ = A ⊗ G of the running factors (bias in the homogeneous coordinate, or Δbᵀ·bias_G·Δb),
        undamped: ⟨D, G·D·A⟩. Under ekfac with a decomposition in use, F̃ is EKFAC's
        (Q_A ⊗ Q_G) diag(s) (Q_A ⊗ Q_G)ᵀ: Σ (Q_Gᵀ D Q_A)² ⊙ s.
        """
        if d_b is not None and self.homogeneous:
            d_w = torch.cat([d_w, d_b[:, None]], dim=1)
        w = self.weights
        if w is not None and w.mode == "ekfac":
            total = ((w.g.T @ d_w @ w.a).square() * w.scale).sum()
        else:
            total = (d_w * (self.G.value @ d_w @ self.A.value)).sum()
        if d_b is not None and not self.homogeneous:
            b = self.bias
            if b is not None and b.mode == "ekfac":
                total = total + ((b.g.T @ d_b).square() * b.scale[:, 0]).sum()
            else:
                total = total + d_b @ self.bias_G.value @ d_b
        return total

    def state_dict(self) -> dict:
        return {
            "A": self.A.state_dict(),
            "G": self.G.state_dict(),
            "bias_G": None if self.bias_G is None else self.bias_G.state_dict(),
            "weights": None if self.weights is None else self.weights.state_dict(),
            "bias": None if self.bias is None else self.bias.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.A.load_state_dict(state["A"])
        self.G.load_state_dict(state["G"])
        if state["bias_G"] is not None:
            self.bias_G = RunningAverage(self.decay, self.init, self.dtype)
            self.bias_G.load_state_dict(state["bias_G"])
        self.weights = state["weights"] and FactorPairInverse.from_state_dict(state["weights"])
        self.bias = state["bias"] and FactorPairInverse.from_state_dict(state["bias"])


def find_layers(model: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """Named Linear/Conv2d layers with trainable weights, and the names of all other parameters."""
    layers: dict[str, nn.Module] = {}
    covered: set[int] = set()
    for name, module in model.named_modules():
        if is_supported(module) and module.weight.requires_grad:
            if isinstance(module, nn.Conv2d):
                check_conv2d(module)
            layers[name or type(module).__name__] = module
            covered.update(id(p) for p in module.parameters(recurse=False))
    others = [
        name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered
    ]
    return layers, others


def check_finite_factors(layers: Iterable[LayerState]) -> None:
    """KfacError naming the first layer and factor with a NaN or ±inf entry."""
    layers = list(layers)
    values = [m.value for layer in layers for m in (layer.A, layer.G, layer.bias_G) if m]
    # One reduction per factor: a NaN or ±inf entry makes its sum non-finite. (A finite
    # factor whose sum overflows only sends us to the exact per-entry check below.)
    if bool(torch.stack([v.sum() for v in values]).isfinite().all()):
        return
    for layer in layers:
        for label, m in (("A", layer.A), ("G", layer.G), ("bias_G", layer.bias_G)):
            if m is not None and not bool(m.value.isfinite().all()):
                raise KfacError(f"non-finite {label} factor in layer {layer.name!r}")


def factor_diagnostics(layers: dict[str, LayerState]) -> dict[str, float]:
    """``diag/<layer>/{A,G}_{trace,cond,clipped}`` of each layer's decomposition in use."""
    names = [n for n, layer in layers.items() if layer.weights is not None]
    if not names:
        return {}
    stacked = torch.stack([layers[n].weights.diagnostics.float() for n in names]).tolist()
    keys = ("A_trace", "G_trace", "A_cond", "G_cond", "A_clipped", "G_clipped")
    return {f"diag/{n}/{k}": v for n, row in zip(names, stacked) for k, v in zip(keys, row)}


def check_schedule(config: KfacConfig) -> None:
    """Refuse the overlap settings K-FAC cannot honour (also checked by ``config``'s consistency
    rules, which the CLI goes through; this covers direct users of ``KFAC``)."""
    if config.async_inverse and not 1 <= config.async_staleness <= config.inverse_every:
        raise KfacError(
            f"kfac.async_staleness must be in [1, kfac.inverse_every = {config.inverse_every}]"
            f", got {config.async_staleness}"
        )
    for knob in ("async_inverse", "pipelined_stats"):
        if getattr(config, knob) and config.damping_mode == "ekfac":
            raise KfacError(f"kfac.{knob}=true does not support kfac.damping_mode='ekfac'")
