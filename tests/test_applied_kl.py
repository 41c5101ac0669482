"""The logged KL prediction of the applied step against a dense ½ΔθᵀF̃Δθ.

Δθ is measured as θ_after − θ_before (not read back from the optimiser), F̃ is built densely as the
block-diagonal of kron(A, G) per layer (bias in A's homogeneous coordinate, or a separate bias_G
block), so the test checks both what was applied (momentum, cold steps) and the Kronecker algebra.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature import KFAC


def dense_block(layer) -> tuple[torch.Tensor, bool]:
    """kron(A, G) for vec(M) in column-stacked order; True if M carries the bias column."""
    a, g = layer.A.value, layer.G.value
    return torch.kron(a, g), layer.homogeneous


def dense_quadratic(kfac: KFAC, before: dict, after: dict, names: list[str]) -> float:
    total = 0.0
    for name in names:
        layer = kfac.layers[name]
        dw = (after[f"{name}.weight"] - before[f"{name}.weight"]).double()
        db = (after[f"{name}.bias"] - before[f"{name}.bias"]).double()
        block, homogeneous = dense_block(layer)
        m = torch.cat([dw, db[:, None]], dim=1) if homogeneous else dw
        vec = m.T.reshape(-1)  # column-stacked
        total += float(vec @ block @ vec)
        if not homogeneous:
            total += float(db @ layer.bias_G.value @ db)
    return 0.5 * total


@pytest.mark.parametrize("variant", variants.names())
@pytest.mark.parametrize("cold_iters", [0, 1])
def test_applied_step_kl_equals_dense_quadratic_of_the_measured_step(variant, cold_iters):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    config = dataclasses.replace(
        KfacConfig(dtype="float64"), momentum=0.9, cold_iters=cold_iters, inverse_every=1
    )
    kfac = KFAC(net, variants.get(variant), config, lr=0.3)
    names = ["0", "2"]
    for _ in range(3):  # momentum carries over: step 3 applies a mix of three directions
        x = torch.randn(16, 3, dtype=torch.float64)
        with kfac.fisher_pass() as fisher:
            out = net(x)
            sampled = torch.distributions.Categorical(logits=out.detach()).sample()
            fisher.backward(torch.log_softmax(out, -1).gather(1, sampled[:, None]).mean())
        kfac.zero_grad()
        (out.pow(2).mean() + out[:, 0].mean()).backward()
        before = {k: v.detach().clone() for k, v in net.state_dict().items()}
        kfac.step()
        after = {k: v.detach().clone() for k, v in net.state_dict().items()}
        whole = kfac.applied_step_kl()
        assert float(whole) == pytest.approx(dense_quadratic(kfac, before, after, names), rel=1e-9)
        first_only = kfac.applied_step_kl(set(net[0].parameters()))
        want_first = dense_quadratic(kfac, before, after, ["0"])
        assert float(first_only) == pytest.approx(want_first, rel=1e-9)
        assert 0 < float(first_only) < float(whole)
