"""Dense oracles shared by the curvature tests."""

from __future__ import annotations

import torch

from kfac_bench.curvature.factors import Factors


def assert_batch1_factors_are_exact(factors: Factors, per_example: dict[str, torch.Tensor]) -> None:
    """One Linear layer, batch 1: kron(G, A) is the exact [W | b] Fisher block g gᵀ (row-major
    vec), or, for a variant with a separate bias block, kron(G, A) the exact W–W block and
    bias_G the exact b–b block. ``per_example``: {"weight": (C_out, K), "bias": (C_out,)}."""
    weight, bias = per_example["weight"], per_example["bias"]
    if factors.bias_G is None:
        vec = torch.cat([weight, bias[:, None]], dim=1).reshape(-1)
        torch.testing.assert_close(torch.kron(factors.G, factors.A), torch.outer(vec, vec))
    else:
        w = weight.reshape(-1)
        torch.testing.assert_close(torch.kron(factors.G, factors.A), torch.outer(w, w))
        torch.testing.assert_close(factors.bias_G, torch.outer(bias, bias))
