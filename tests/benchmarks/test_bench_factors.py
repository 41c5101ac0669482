"""Factor statistics per variant for every layer of the Nature CNN (B = 640), the MinAtar CNN
(B = 320) and the CartPole MLP (B = 256), each against the bare BLAS product of the same shapes.

The kernel runs as inside ``KFAC`` (patch rows in a reused ``Workspace``). Each round's setup times the bare ``XᵀX`` products the variant needs (``benchlib.factor_products``)
on contiguous matrices of the same shapes, so ``extra_info["ratio_to_bare"]`` compares the kernel
with what the machine's BLAS does *at the same moment* (the 2-core CI machine is shared and noisy).
"""

from __future__ import annotations

import copy

import pytest
import torch
from benchlib import (
    LAYERS,
    QUICK_BATCH,
    VARIANTS,
    deriv_trace,
    factor_products,
    gram_flops,
    homogeneous_corner,
    layer_inputs,
    median,
    pedantic,
    reference_factors,
    time_call,
)

import variants
from kfac_bench.curvature.adapters import Workspace, using_workspace

CASES = [(case, variant) for case in LAYERS for variant in VARIANTS]


@pytest.mark.parametrize(("case", "variant"), CASES, ids=[f"{c.id}-{v}" for c, v in CASES])
def test_factor_statistics(benchmark, device, quick, case, variant):
    module = case.module().to(device)
    batch = QUICK_BATCH if quick else case.batch
    x, g = layer_inputs(case, module, batch, device)
    strategy = variants.get(variant)
    t, k, c, bias = case.geometry(module)
    products = factor_products(variant, t, k, c, bias, batch)

    bare_inputs = [] if quick else [torch.rand(r, n, device=device) for r, n in products]
    # kfac-reduce on a conv reads its whole input and gradient once to reduce them over the T
    # positions before its small products: the bare reference includes that one read
    reads = [x, g] if variant == "kfac-reduce" and t > 1 and not quick else []
    bare_s: list[float] = []

    def bare_products():
        seconds = sum(time_call(lambda m=m: m.T @ m, device) for m in bare_inputs)
        seconds += sum(time_call(lambda m=m: m.sum(), device) for m in reads)
        bare_s.append(seconds)

    workspace = Workspace()  # as inside KFAC: the patch rows reuse one buffer across rounds

    def kernel():
        with using_workspace(workspace):
            return strategy.factors(module, x, g)

    factors = pedantic(benchmark, kernel, device, setup=bare_products, max_rounds=9)

    # --- the result is right -------------------------------------------------------------
    # the whole formula, float64, on a 2-example slice against an independent implementation
    module64 = copy.deepcopy(module).double().cpu()
    xs, gs = x[:2].double().cpu(), g[:2].double().cpu()
    want_a, want_g, want_bias = reference_factors(variant, module64, xs, gs)
    assert want_a.shape[0] in (k, k + 1) and want_g.shape == (c, c)  # the reference's own shapes
    assert factors.A.shape == want_a.shape and factors.G.shape == (c, c)
    assert (factors.bias_G is None) == (want_bias is None)
    for m in (factors.A, factors.G):
        assert bool(torch.isfinite(m).all())
        torch.testing.assert_close(m, m.T, rtol=1e-5, atol=1e-6 * float(m.abs().max()))
    corner = homogeneous_corner(variant, t) if bias else None
    if corner is not None:
        assert float(factors.A[-1, -1]) == pytest.approx(corner, rel=1e-5)
    assert float(torch.trace(factors.G)) == pytest.approx(deriv_trace(variant, g), rel=1e-3)
    got = strategy.factors(module64, xs, gs)
    torch.testing.assert_close(got.A, want_a, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got.G, want_g, rtol=1e-6, atol=1e-12)
    if want_bias is not None:
        torch.testing.assert_close(got.bias_G, want_bias, rtol=1e-6, atol=1e-12)

    flops = sum(gram_flops(r, n) for r, n in products)
    rounds = list(benchmark.stats.stats.data) if not benchmark.disabled else []
    benchmark.extra_info.update(
        kind="factor",
        net=case.net,
        layer=case.layer,
        batch=batch,
        variant=variant,
        T=t,
        K=k,
        C=c,
        bias=bias,
        products=[list(p) for p in products],
        bare_reads=[list(m.shape) for m in reads],
        flops=flops,
        bare_s=bare_s,
        # each round's kernel time over the bare products timed just before it (its setup)
        ratio_to_bare=median([k / b for k, b in zip(rounds, bare_s)])
        if bare_s and rounds
        else None,
        device=str(device),
    )
