"""The K-FAC side: each variant's factors from the same Fisher pass, as a block on M order.

Factors come from one Fisher pass on exactly the batch, actions and noise of the exact side
(:class:`~kfac_bench.fidelity.exact.FisherProblem`), captured by the trainer's own
:class:`~kfac_bench.curvature.capture.LayerCapture` (layer input, gradient of the batch-*mean*
Fisher loss at the layer output) and turned into factors by ``variants.get(name).factors`` — no
running average, no subsampling (``stats_batch_fraction``): one batch, as in DESIGN.md §2.

Block of one layer in M order (``layout.py``; row-major vec, so ``kron(G, A) vec(M) = vec(G M Aᵀ)``):

- homogeneous variants (and any layer without a bias):  F̃_l = G ⊗ A
  (KFC, Grosse & Martens 2016; Martens & Grosse 2015 eq. 5 for T = 1);
- split bias (``ikostrikov``): F̃_l = G ⊗ [A 0; 0 0] + bias_G ⊗ e e ᵀ, e the bias column —
  the weight–bias cross blocks of the exact Fisher are dropped.

Preconditioning mirrors ``curvature/optimizer.py`` ``_Layer.precondition``: one
``invert_pair(A, G)`` on M = [∇W | ∇b] when homogeneous, else the weights with (A, G) and the bias
with ([1], bias_G), under the row's ``KfacConfig`` (``damping_mode``, λ, τ). Under ``ekfac`` the
block's :class:`~kfac_bench.fidelity.eigenbasis.EkfacBlock` (same bases, s from the pass) is used.

Fisher type (``fisher_type`` column): ``sampled`` captures the trainer's Fisher loss (sampled
actions and value noise); ``empirical`` passes another batch-mean loss, the training loss's data
terms (``batch.empirical_loss``, as ``kfac.fisher_type = "empirical"`` in ``AcktrRule.update``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kfac_bench.config import KfacConfig
from kfac_bench.curvature.capture import LayerCapture
from kfac_bench.curvature.factors import Factors, FactorStrategy
from kfac_bench.curvature.inverse import invert_pair
from kfac_bench.fidelity.eigenbasis import EKFAC, EkfacBlock, batch_ekfac
from kfac_bench.fidelity.exact import FisherProblem, fisher_terms
from kfac_bench.fidelity.layout import LayerSlot

LayerBatches = dict[str, tuple[torch.Tensor, torch.Tensor]]
# (head (B, A), values (B,)) -> the batch-mean loss whose per-example terms build the factors
FisherLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sampled_loss(problem: FisherProblem) -> FisherLoss:
    """The trainer's Fisher loss on ``problem``'s sampled actions and noise: mean_n ℓ_n."""

    def loss(head: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        p = problem
        terms = fisher_terms(
            head, values, p.actions, p.noise, p.vf_fisher_coef, p.include_value, p.log_std
        )
        return terms.mean()

    return loss


def capture_layer_batches(problem: FisherProblem, loss: FisherLoss | None = None) -> LayerBatches:
    """{layer: (layer_input, grad_output)} from one pass: forward, d loss/d outputs.

    ``loss``: the batch-mean loss of the pass (default :func:`sampled_loss`, the Fisher pass)."""
    modules = {slot.name: slot.module for slot in problem.slots}
    capture = LayerCapture(modules)
    loss_fn = sampled_loss(problem) if loss is None else loss
    try:
        with capture.recording():
            head, values = problem.policy(problem.obs)
            loss = loss_fn(head, values)
            grads = capture.output_gradients(loss)
            return {name: (capture.inputs[name], grads[name].detach()) for name in modules}
    finally:
        capture.remove()


@dataclass(frozen=True)
class Preconditioned:
    """One layer's K-FAC direction and what the inverse clipped (eigen mode; 0 otherwise)."""

    delta: torch.Tensor  # (C_out·cols,) in M order
    a_clipped: int
    g_clipped: int
    bias_g_clipped: int | None  # split-bias variants only


@dataclass(frozen=True)
class KfacBlock:
    """A variant's factors for one layer, as an operator on the layer's M-order slice."""

    slot: LayerSlot
    factors: Factors
    ekfac: EkfacBlock | None = None  # the same bases with s (ekfac rows)

    def __post_init__(self) -> None:
        a_dim = self.factors.A.shape[0]
        s = self.slot
        if s.has_bias and a_dim != s.cols and self.factors.bias_G is None:
            raise ValueError(
                f"layer {s.name!r}: the variant gave neither a homogeneous coordinate in A "
                "nor a bias_G block"
            )
        if a_dim not in (s.k, s.cols):
            raise ValueError(f"layer {s.name!r}: A is {a_dim}² but the layer has K = {s.k}")

    @property
    def split_bias(self) -> bool:
        """Whether the bias is its own block (A has no homogeneous coordinate)."""
        return self.slot.has_bias and self.factors.A.shape[0] == self.slot.k

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """F̃_l v for v (…, C_out·cols) (batched over leading dims), never forming F̃_l."""
        a, g = self.factors.A, self.factors.G
        m = self.slot.matrix(v)
        if not self.split_bias:
            out = g @ m @ a.mT
        else:
            k = self.slot.k
            weights = g @ m[..., :k] @ a.mT
            bias = m[..., k:].mT @ self.factors.bias_G.mT  # (…, 1, C_out)
            out = torch.cat([weights, bias.mT], dim=-1)
        return out.reshape(v.shape)

    def dense(self) -> torch.Tensor:
        """F̃_l as a (C_out·cols)² matrix in M order."""
        a, g = self.factors.A, self.factors.G
        if not self.split_bias:
            return torch.kron(g, a)
        k, cols = self.slot.k, self.slot.cols
        padded = a.new_zeros(cols, cols)
        padded[:k, :k] = a
        corner = a.new_zeros(cols, cols)
        corner[k, k] = 1.0
        return torch.kron(g, padded) + torch.kron(self.factors.bias_G, corner)

    def precondition(self, grad_slice: torch.Tensor, config: KfacConfig) -> Preconditioned:
        """F̃_l⁻¹ g_l under ``config`` (as ``_Layer.precondition``); g_l (C_out·cols,)."""
        s = self.slot
        if config.damping_mode == EKFAC:
            if self.ekfac is None:
                raise ValueError(f"layer {s.name!r}: no EKFAC scaling for this factor set")
            delta = self.ekfac.precondition(grad_slice, config.damping)
            return Preconditioned(delta, 0, 0, 0 if self.split_bias else None)
        m = s.matrix(grad_slice)
        weights = invert_pair(self.factors.A, self.factors.G, config, s.name)
        a_clip, g_clip = (int(x) for x in weights.diagnostics[4:6].tolist())
        if not self.split_bias:
            return Preconditioned(weights.apply(m).reshape(-1), a_clip, g_clip, None)
        one = torch.ones(1, 1, dtype=m.dtype, device=m.device)
        bias = invert_pair(one, self.factors.bias_G, config, f"{s.name}.bias")
        delta = torch.cat([weights.apply(m[:, : s.k]), bias.apply(m[:, s.k :])], dim=1)
        return Preconditioned(delta.reshape(-1), a_clip, g_clip, int(bias.diagnostics[5]))


def variant_blocks(
    strategy: FactorStrategy,
    slots: list[LayerSlot],
    batches: LayerBatches,
    ekfac: KfacConfig | None = None,
) -> list[KfacBlock]:
    """One batch's factors of every layer under ``strategy`` (no averaging); with ``ekfac`` (the
    run's ``KfacConfig``) also each layer's EKFAC block on that batch (``eigenbasis.batch_ekfac``)."""
    blocks = []
    for slot in slots:
        factors = strategy.factors(slot.module, *batches[slot.name])
        extra = None
        if ekfac is not None:
            extra = batch_ekfac(slot, slot.module, factors, *batches[slot.name], ekfac)
        blocks.append(KfacBlock(slot, factors, extra))
    return blocks
