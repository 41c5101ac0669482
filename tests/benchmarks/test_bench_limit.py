"""The limit: bare ``XᵀX`` products of every shape the factor statistics multiply.

``gemm`` is torch's ``X.T @ X`` (MKL on the CPU wheel, cuBLAS on CUDA). ``syrk`` is the
symmetric product the factor statistics call, ``factors.gram``: MKL's syrk plus the mirror of
its triangle for products at least ``syrk.MIN_COLUMNS`` wide (``curvature/syrk.py``), a GEMM for
narrower ones, the blocked symmetric product where that BLAS is missing (CPU only). FLOP counts in ``extra_info`` are the GEMM's 2·rows·cols² for both,
so GFLOP/s compare "useful work per second" and syrk's bound is twice the GEMM's rate.
"""

from __future__ import annotations

import pytest
import torch
from benchlib import LAYERS, QUICK_BATCH, VARIANTS, factor_products, gram_flops, pedantic

from kfac_bench.curvature.factors import gram, gram_kernel

BIG = 1e9  # FLOPs from which a shape is also measured in float64 ...
F64_MAX_ROWS = 65_536  # ... unless it is conv1's 256 000-row patch matrix (time budget)


def _shapes(batch_of) -> list[tuple[int, int]]:
    shapes = set()
    for case in LAYERS:
        module = case.module()
        t, k, c, bias = case.geometry(module)
        for variant in VARIANTS:
            shapes.update(factor_products(variant, t, k, c, bias, batch_of(case)))
    return sorted(shapes, key=lambda s: -gram_flops(*s))


FULL = _shapes(lambda case: case.batch)
PARAMS = [
    (op, rows, cols, dtype)
    for rows, cols in FULL
    for dtype in (
        ["f32", "f64"] if gram_flops(rows, cols) >= BIG and rows <= F64_MAX_ROWS else ["f32"]
    )
    for op in ("gemm", "syrk")
]
DTYPES = {"f32": torch.float32, "f64": torch.float64}


@pytest.mark.parametrize(
    ("op", "rows", "cols", "dtype"),
    PARAMS,
    ids=[f"{op}-{r}x{c}-{d}" for op, r, c, d in PARAMS],
)
def test_bare_product(benchmark, device, quick, op, rows, cols, dtype):
    if op == "syrk" and device.type != "cpu":
        pytest.skip("the symmetric product's syrk path runs on the CPU only")
    if quick:  # the same code path on a small matrix
        rows, cols = min(rows, QUICK_BATCH * 16), min(cols, 96)
    gen = torch.Generator().manual_seed(rows * 7 + cols)
    x = torch.rand(rows, cols, generator=gen, dtype=DTYPES[dtype]).to(device)
    if op == "gemm":
        result = pedantic(benchmark, lambda: x.T @ x, device)
        upper = torch.triu(result)
    else:
        result = pedantic(benchmark, lambda: gram(x, 1.0), device)
        upper = torch.triu(result)
    # against a float64 reference on a slice of rows (the product is linear in the rows)
    want = x[:64].double().cpu().T @ x[:64].double().cpu()
    if rows <= 64:
        tol = 1e-4 if dtype == "f32" else 1e-10
        torch.testing.assert_close(
            upper.double().cpu(), torch.triu(want), rtol=tol, atol=tol * float(want.abs().max())
        )
    else:  # the diagonal of XᵀX is the column norms, cheap to check on the full matrix
        diag = (x.double().cpu() ** 2).sum(0)
        torch.testing.assert_close(
            torch.diagonal(upper).double().cpu(),
            diag,
            rtol=1e-4 if dtype == "f32" else 1e-10,
            atol=0.0,
        )
    benchmark.extra_info.update(
        kind="bare",
        op=op,
        kernel=gram_kernel(x) if op == "syrk" else "gemm",
        rows=rows,
        cols=cols,
        dtype=dtype,
        flops=gram_flops(rows, cols),
        device=str(device),
    )
