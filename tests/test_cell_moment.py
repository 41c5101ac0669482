"""Ω from stride cells (curvature/cell_moment.py) against patches cut out one by one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import variants
from kfac_bench.curvature import cell_moment, factors
from kfac_bench.curvature.adapters import conv2d_batch

# (C_in, H, W, kernel, stride, padding): square and rectangular cells, an input that is no
# multiple of the stride (cropped), zero padding, 3 × 3 cells and 1 × 1 cells (stride 1)
GEOMETRIES = [
    (3, 12, 12, 4, 2, 0),
    (2, 13, 11, (4, 6), (2, 3), (1, 0)),
    (2, 14, 14, 6, 2, 1),
    (2, 7, 8, 3, 1, 0),
]


def brute_force_omega(conv: nn.Conv2d, x: torch.Tensor, homogeneous: bool) -> torch.Tensor:
    """(1/B) Σ_n Σ_(i,j) ā āᵀ in float64, each patch sliced out of the padded input by loops."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = F.pad(x.double(), (pw, pw, ph, ph))
    b, _, h, w = padded.shape
    k = x.shape[1] * kh * kw + int(homogeneous)
    omega = torch.zeros(k, k, dtype=torch.float64)
    for n in range(b):
        for i in range((h - kh) // sh + 1):
            for j in range((w - kw) // sw + 1):
                patch = padded[n, :, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(-1)
                if homogeneous:
                    patch = torch.cat([patch, torch.ones(1, dtype=torch.float64)])
                omega += torch.outer(patch, patch)
    return omega / b


def _layer(geometry, dtype=torch.float64):
    c, h, w, kernel, stride, padding = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(c, 5, kernel, stride, padding).to(dtype)
    x = torch.rand(3, c, h, w, generator=torch.Generator().manual_seed(h * w), dtype=dtype)
    grad = torch.randn_like(conv(x))
    return conv, x, grad


@pytest.mark.parametrize(
    "chunk_rows", [cell_moment.CHUNK_ROWS, 5], ids=["one-chunk", "chunks-of-5"]
)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:3])))
@pytest.mark.parametrize("homogeneous", [True, False])
def test_cell_second_moment_equals_the_sum_over_sliced_patches(
    geometry, homogeneous, chunk_rows, monkeypatch
):
    """The cell products and their corrections, permuted to im2col order, give Ω of the patch
    loops (float64: to rounding; float32: to its precision); the scale is applied once. With
    5-row chunks the shifted products accumulate over many chunks and a ragged last one."""
    monkeypatch.setattr(cell_moment, "CHUNK_ROWS", chunk_rows)
    conv, x, grad = _layer(geometry)
    want = brute_force_omega(conv, x, homogeneous)
    got = cell_moment.cell_second_moment(conv2d_batch(conv, x, grad), homogeneous, scale=0.3)
    torch.testing.assert_close(got, 0.3 * want, rtol=1e-12, atol=1e-12)
    conv32, x32, grad32 = conv.float(), x.float(), grad.float()
    got32 = cell_moment.cell_second_moment(conv2d_batch(conv32, x32, grad32), homogeneous)
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5 * float(want.max()))


def test_shifted_products_equal_sums_of_outer_products(monkeypatch):
    """Σ_u left[u] rows[u + s]ᵀ for each shift, by an explicit loop over u in float64, equals
    shifted_products' chunked GEMMs (23 rows in chunks of 5: four whole and a ragged one)."""
    monkeypatch.setattr(cell_moment, "CHUNK_ROWS", 5)
    gen = torch.Generator().manual_seed(4)
    left = torch.randn(23, 3, generator=gen, dtype=torch.float64)
    rows = torch.randn(23 + 7, 4, generator=gen, dtype=torch.float64)
    shifts = [0, 2, 7]
    got = cell_moment.shifted_products(left, rows, shifts)
    for shift, product in zip(shifts, got):
        want = sum(torch.outer(left[u], rows[u + shift]) for u in range(23))
        torch.testing.assert_close(product, want, rtol=1e-12, atol=1e-12)


def test_cell_grid_counts_what_it_leaves_out():
    """E_a of Nature conv1 (21 × 21 cells, 20 × 20 positions): one grid row and one column, 41
    cells, for every offset; and a cell of E_a is never x(p + a) of any position p."""
    conv = nn.Conv2d(4, 32, 8, 4)
    batch = conv2d_batch(conv, torch.zeros(1, 4, 84, 84), torch.zeros(1, 32, 20, 20))
    grid = cell_moment.CellGrid.of(batch.conv_input)
    assert (grid.grid, grid.width, grid.offsets) == ((21, 21), 64, [(0, 0), (0, 1), (1, 0), (1, 1)])
    for a in grid.offsets:
        outside = set(grid.outside(a).tolist())
        seen = {(i + a[0]) * 21 + j + a[1] for i in range(20) for j in range(20)}
        assert len(outside) == 41 and not outside & seen and len(outside | seen) == 441


@pytest.mark.parametrize(
    ("c_in", "size", "kernel", "stride", "cells"),
    [(4, 84, 8, 4, True), (32, 20, 4, 2, False), (64, 9, 3, 1, False), (4, 10, 3, 1, False)],
    ids=["nature-conv1", "nature-conv2", "nature-conv3", "minatar-conv"],
)
def test_cells_are_taken_where_they_need_fewer_flops(c_in, size, kernel, stride, cells):
    """The rule of cell_moment.worthwhile on the benchmark networks' layers: Nature conv1 only
    (0.54 of the blocked product's FLOPs; conv2 0.71, conv3 0.83; MinAtar's cells 4 wide);
    never for dilated convolutions (no ConvInput)."""
    conv = nn.Conv2d(c_in, 8, kernel, stride)
    x = torch.zeros(2, c_in, size, size)
    batch = conv2d_batch(conv, x, torch.zeros_like(conv(x)))
    assert cell_moment.worthwhile(batch.conv_input, batch.in_features + 1) is cells
    dilated = nn.Conv2d(c_in, 8, kernel, stride, dilation=2)
    assert conv2d_batch(dilated, x, torch.zeros_like(dilated(x))).conv_input is None


def test_patch_second_moment_takes_cells_unless_the_rows_exist(monkeypatch):
    """patch_second_moment goes through the cells for a worthwhile layer and through the patch
    rows once they are written (or when the cells are ruled out); all three agree."""
    conv, x, grad = _layer(GEOMETRIES[0], torch.float32)
    calls = []
    real = cell_moment.cell_second_moment
    monkeypatch.setattr(cell_moment, "worthwhile", lambda conv_input, columns: True)
    monkeypatch.setattr(
        cell_moment, "cell_second_moment", lambda *args: calls.append(1) or real(*args)
    )
    batch = conv2d_batch(conv, x, grad)
    from_cells = factors.patch_second_moment(batch, homogeneous=True)
    assert calls == [1] and not batch.has_patch_rows
    batch.patch_rows(homogeneous=True)
    from_rows = factors.patch_second_moment(batch, homogeneous=True)
    assert calls == [1]
    monkeypatch.setattr(cell_moment, "worthwhile", lambda conv_input, columns: False)
    ruled_out = factors.patch_second_moment(conv2d_batch(conv, x, grad), homogeneous=True)
    assert calls == [1]
    torch.testing.assert_close(from_cells, from_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ruled_out, from_rows, rtol=0, atol=0)


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_computes_the_same_factors_with_cells(name, monkeypatch):
    """The reference presets compute what they did before the cells: each variant's factors of
    a Nature-conv1-shaped layer (8×8/4, a small batch) with the cells equal those from the
    patch rows, to float32 tolerance."""
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 8, 8, 4)
    x = torch.rand(2, 4, 84, 84)
    grad = torch.randn_like(conv(x)) / 2
    strategy = variants.get(name)
    assert cell_moment.worthwhile(conv2d_batch(conv, x, grad).conv_input, 257)
    with_cells = strategy.factors(conv, x, grad)
    monkeypatch.setattr(cell_moment, "worthwhile", lambda conv_input, columns: False)
    without = strategy.factors(conv, x, grad)
    for field in ("A", "G", "bias_G"):
        got, want = getattr(with_cells, field), getattr(without, field)
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("chunk_rows", [cell_moment.CHUNK_ROWS, 1000], ids=["one-chunk", "chunks"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_training_gradient_of_a_cell_layer_is_autograds(bias, chunk_rows, monkeypatch):
    """kfac.backward after a Fisher pass that took Ω from the cells: the conv's weight (and bias)
    gradient, from products with the cell rows (cell_weight_gradient, no patch rows built),
    equals loss.backward()'s on a twin network, and the rest of the network's too (the 3 × 441
    cell rows in one chunk, and in chunks of 1000)."""
    monkeypatch.setattr(cell_moment, "CHUNK_ROWS", chunk_rows)
    from kfac_bench.config import KfacConfig
    from kfac_bench.curvature import KFAC

    def make():
        torch.manual_seed(3)
        net = nn.Sequential(nn.Conv2d(4, 6, 8, 4, bias=bias), nn.ReLU(), nn.Flatten())
        net.append(nn.Linear(6 * 20 * 20, 3))
        return net, KFAC(net, variants.get("paper"), KfacConfig(), lr=0.05)

    from kfac_bench.curvature.adapters import LayerBatch

    calls, rows_built = [], []
    real_gradient, real_rows = cell_moment.cell_weight_gradient, LayerBatch.patch_rows
    monkeypatch.setattr(
        cell_moment, "cell_weight_gradient", lambda *a: calls.append(1) or real_gradient(*a)
    )
    monkeypatch.setattr(
        LayerBatch,
        "patch_rows",
        lambda self, homogeneous: (
            rows_built.append(self.conv_input is not None) or real_rows(self, homogeneous)
        ),
    )
    gen = torch.Generator().manual_seed(8)
    x, a = torch.rand(3, 4, 84, 84, generator=gen), torch.randint(0, 3, (3,), generator=gen)
    grads = []
    for reuse in (True, False):
        net, kfac = make()
        with kfac.fisher_pass() as fisher:
            logits = net(x)
            fisher.backward(torch.distributions.Categorical(logits=logits).log_prob(a).mean())
        loss = nn.functional.cross_entropy(logits, a)
        kfac.backward(loss) if reuse else loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert calls == [1] and True not in rows_built  # the conv: cells only, no patch rows
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
