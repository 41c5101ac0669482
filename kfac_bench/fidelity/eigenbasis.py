"""The EKFAC side of fidelity (``damping_mode = "ekfac"``): a block in the Kronecker eigenbasis.

Eigenvalue-corrected K-FAC (George et al. 2018; alecwangcq/KFAC-Pytorch ``optimizers/ekfac.py``)
keeps a variant's Kronecker eigenbases and replaces the eigenvalue products d_G d_Aᵀ by the
diagonal s of the Fisher in that basis. With M = [∇W | ∇b] as (C, K') (M order, ``layout.py``;
row-major vec, so kron(X, Y) vec(M) = vec(X M Yᵀ)), Q_A (K', K') and Q_G (C, C) the eigenvectors
of the variant's A and G:

    F̃_l = (Q_G ⊗ Q_A) diag(vec s) (Q_G ⊗ Q_A)ᵀ,   F̃_l vec(M) = vec(Q_G [(Q_Gᵀ M Q_A) ⊙ s] Q_Aᵀ)
    (F̃_l + λI)⁻¹ vec(M) = vec(Q_G [(Q_Gᵀ M Q_A) ⊘ (s + λ)] Q_Aᵀ)

and for ikostrikov's separate bias block, the same with Q_A = [1] and Q_b, s_b (C, 1) of bias_G
(the weight–bias cross blocks are dropped, as in ``approx.KfacBlock``).

Where s comes from (the trainer's own code in both cases, ``curvature/ekfac.py``):

- ``batch`` factors (:func:`batch_ekfac`): the bases are ``invert_pair``'s ``eigh`` of this batch's
  factors, s = ``scale_statistic`` of this batch's Fisher pass (layer inputs and the gradient of
  the batch-mean Fisher loss at the layer outputs): s = E_n[(Q_Gᵀ ∇W_n Q_A)²] with the true
  per-example gradients ∇W_n, whatever the variant's scaling of A and G;
- ``running-K`` factors (``running.py``): the decomposition the trainer's ``KFAC`` holds after K
  Fisher passes and K steps (its reset of s to d_G d_Aᵀ at each new basis, then ``fold_scale``).

Block error of an ekfac row (``rows.kfac_block_errors`` on :class:`EkfacBlock`): ‖F_ll − F̃_l‖_F /
‖F_ll‖_F with F̃_l = Q diag(s) Qᵀ above, Q = Q_G ⊗ Q_A. Q is orthogonal, so this equals
‖Qᵀ F_ll Q − diag(s)‖_F / ‖F_ll‖_F: the error measured in the Kronecker eigenbasis, the
off-diagonal mass of Qᵀ F_ll Q (which no diagonal can represent) plus the mismatch of s with its
diagonal. Against ``sampled-fisher`` with batch factors the second part is zero (s *is* the
diagonal of the sampled block in that basis), except on a split-bias layer, whose dropped
weight–bias block also counts. The network value is that of the block-diagonal whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from kfac_bench.config import KfacConfig
from kfac_bench.curvature.adapters import layer_batch
from kfac_bench.curvature.ekfac import bias_scale_statistic, scale_statistic
from kfac_bench.curvature.factors import Factors
from kfac_bench.curvature.inverse import FactorPairInverse, invert_pair
from kfac_bench.fidelity.layout import LayerSlot

EKFAC = "ekfac"


def _rotate(pair: FactorPairInverse, m: torch.Tensor) -> torch.Tensor:
    """Q_Gᵀ M Q_A for M (…, C, K')."""
    return pair.g.mT @ m @ pair.a


def _back(pair: FactorPairInverse, v: torch.Tensor) -> torch.Tensor:
    """Q_G V Q_Aᵀ for V (…, C, K')."""
    return pair.g @ v @ pair.a.mT


@dataclass(frozen=True)
class EkfacBlock:
    """One layer's EKFAC curvature on its M-order slice (the module docstring's F̃_l).

    ``weights``: an ``ekfac`` :class:`FactorPairInverse` (eigenvectors ``a`` (K', K'), ``g``
    (C, C), ``scale`` s (C, K')); ``bias``: the separate bias block's (``a`` = [1], ``scale``
    (C, 1)), or None when the bias (if any) is the homogeneous coordinate of ``weights``.
    """

    slot: LayerSlot
    weights: FactorPairInverse
    bias: FactorPairInverse | None = None

    def __post_init__(self) -> None:
        for pair in (self.weights, self.bias):
            if pair is not None and (pair.mode != EKFAC or pair.scale is None):
                raise ValueError(f"layer {self.slot.name!r}: not an ekfac decomposition with s")

    @property
    def k_weights(self) -> int:
        """Columns of M covered by ``weights`` (K' = cols, or K with a separate bias)."""
        return self.weights.a.shape[0]

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """F̃_l v for v (…, C·cols) (batched over leading dims)."""
        m = self.slot.matrix(v)
        k = self.k_weights
        out = _back(self.weights, _rotate(self.weights, m[..., :k]) * self.weights.scale)
        if self.bias is not None:
            b = self.bias
            out = torch.cat([out, _back(b, _rotate(b, m[..., k:]) * b.scale)], dim=-1)
        return out.reshape(v.shape)

    def dense(self) -> torch.Tensor:
        """F̃_l as a (C·cols)² matrix in M order."""
        n = self.slot.size
        eye = torch.eye(n, dtype=self.weights.a.dtype, device=self.weights.a.device)
        return self.mv(eye).mT  # columns F̃ e_i (symmetric either way)

    def precondition(self, grad_slice: torch.Tensor, damping: float) -> torch.Tensor:
        """(F̃_l + λI)⁻¹ g_l through the trainer's ``FactorPairInverse.apply`` at λ = ``damping``."""
        m = self.slot.matrix(grad_slice)
        k = self.k_weights
        delta = dataclasses.replace(self.weights, damping=damping).apply(m[:, :k])
        if self.bias is not None:
            bias = dataclasses.replace(self.bias, damping=damping).apply(m[:, k:])
            delta = torch.cat([delta, bias], dim=1)
        return delta.reshape(-1)


def ekfac_config(config: KfacConfig) -> KfacConfig:
    """``config`` with ``damping_mode = "ekfac"`` (bases only: λ is applied per row)."""
    return dataclasses.replace(config, damping_mode=EKFAC)


def batch_ekfac(
    slot: LayerSlot,
    module: nn.Module,
    factors: Factors,
    layer_input: torch.Tensor,
    grad_output: torch.Tensor,
    config: KfacConfig,
) -> EkfacBlock:
    """EKFAC on one batch: bases of ``factors`` (``invert_pair``, ``eigh``), s from the batch.

    ``layer_input``/``grad_output``: the Fisher pass's layer input and the gradient of the
    batch-mean Fisher loss at the layer output (``approx.capture_layer_batches``), as the trainer
    keeps them for ``LayerState.fold_scale``; ``factors`` the variant's factors of that pass.
    s = ``curvature.ekfac.scale_statistic`` (and ``bias_scale_statistic``): no reset, no
    averaging, the statistic of this batch alone.
    """
    settings = ekfac_config(config)
    batch = layer_batch(module, layer_input, grad_output)
    homogeneous = factors.A.shape[0] == slot.k + 1
    weights = invert_pair(factors.A, factors.G, settings, slot.name)
    weights.scale = scale_statistic(batch, weights.a, weights.g, homogeneous).to(weights.a.dtype)
    bias = None
    if factors.bias_G is not None:
        one = torch.ones(1, 1, dtype=factors.bias_G.dtype, device=factors.bias_G.device)
        bias = invert_pair(one, factors.bias_G, settings, f"{slot.name}.bias")
        bias.scale = bias_scale_statistic(batch, bias.g).to(bias.g.dtype)
    return EkfacBlock(slot, weights, bias)


__all__ = ["EKFAC", "EkfacBlock", "batch_ekfac", "ekfac_config"]
