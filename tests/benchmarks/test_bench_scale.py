"""EKFAC's scaling statistic s = E_n[(Q_Gᵀ ∇W_n Q_A)²] (``kfac_bench/curvature/ekfac.py``) for
every layer of the Nature CNN (B = 640) and the MinAtar CNN (B = 320), next to the factor
statistics of ``test_bench_factors.py``.

Each round's setup times the ``paper`` factor statistic of the same layer on the same batch, so
``extra_info["ratio_to_factors"]`` says what the scaling statistic costs relative to the factors
at the same moment on the shared machine. The rows are ``kind = "factor"`` with variant
``ekfac-scale`` so the bench report lists them in the factor table; they carry no bare product
(``ratio_to_bare`` None), so the factor-vs-bare target does not apply to them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from benchlib import LAYERS, QUICK_BATCH, layer_inputs, median, pedantic, time_call
from torch import nn

import variants
from kfac_bench.curvature.adapters import Workspace, layer_batch, using_workspace
from kfac_bench.curvature.ekfac import choose_route, route_costs, scale_statistic

CASES = [case for case in LAYERS if case.net in ("nature", "minatar")]


def basis(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """An n×n stand-in for an eigenbasis: the cost and the formula do not need orthogonality."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, n, generator=gen) / math.sqrt(n)).to(device)


def reference_scale(module: nn.Module, x, g, q_a, q_g) -> torch.Tensor:
    """float64 per-example gradients ∇W_n = Σ_t ĝ ā ᵀ through ``F.unfold``, projected, squared."""
    x, g, q_a, q_g = (v.double().cpu() for v in (x, g, q_a, q_g))
    b = x.shape[0]
    if isinstance(module, nn.Conv2d):
        a = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        a = a.transpose(1, 2)  # (B, T, K)
        d = g.flatten(2).transpose(1, 2) * b  # (B, T, C)
    else:
        a, d = x.reshape(b, 1, -1), g.reshape(b, 1, -1) * b
    a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype)], dim=2)
    per_example = torch.einsum("btc,btk->bck", d, a)
    return (q_g.T @ per_example @ q_a).square().mean(0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ekfac_scale_statistic(benchmark, device, quick, case):
    module = case.module().to(device)
    batch = QUICK_BATCH if quick else case.batch
    x, g = layer_inputs(case, module, batch, device)
    t, k, c, _ = case.geometry(module)
    q_a, q_g = basis(k + 1, 1, device), basis(c, 2, device)
    paper = variants.get("paper")
    workspace = Workspace()
    factor_s: list[float] = []

    def factors():  # the same layer's factor statistic, timed just before each round
        def run():
            with using_workspace(workspace):
                paper.factors(module, x, g)

        factor_s.append(time_call(run, device))

    def kernel():
        with using_workspace(workspace):
            return scale_statistic(layer_batch(module, x, g), q_a, q_g, homogeneous=True)

    got = pedantic(benchmark, kernel, device, setup=factors, max_rounds=9)

    # the result is right: float64 on a 2-example slice against F.unfold + einsum
    module64 = module.double().cpu()
    xs, gs = x[:2].double().cpu(), g[:2].double().cpu()
    q_a64, q_g64 = q_a.double().cpu(), q_g.double().cpu()
    want = reference_scale(module64, xs, gs, q_a64, q_g64)
    torch.testing.assert_close(
        scale_statistic(layer_batch(module64, xs, gs), q_a64, q_g64, True), want
    )
    assert got.shape == (c, k + 1) and bool(torch.isfinite(got).all())

    route = choose_route(batch, t, c, k + 1)
    rounds = list(benchmark.stats.stats.data) if not benchmark.disabled else []
    benchmark.extra_info.update(
        kind="factor",
        net=case.net,
        layer=case.layer,
        batch=batch,
        variant="ekfac-scale",
        T=t,
        K=k,
        C=c,
        bias=True,
        route=route,
        products=[],
        flops=2 * route_costs(batch, t, c, k + 1)[route],
        bare_s=[],
        ratio_to_bare=None,
        factor_s=factor_s,
        # each round's scaling statistic over the factor statistic timed just before it
        ratio_to_factors=median([r / f for r, f in zip(rounds, factor_s)])
        if rounds and factor_s
        else None,
        device=str(device),
    )
