"""Ω of a convolution whose stride divides its kernel, from its input's stride cells (no im2col).

When s | k, the input splits into a grid of non-overlapping s_h × s_w *cells* (width
w = C_in·s_h·s_w), and every patch is c_h × c_w whole cells (c = k/s): Nature conv1 (8×8/4 on
84×84) is 21 × 21 cells of 64 values, each patch 2 × 2 of them. With the cells as rows X (one per
grid position, example-major, then grid row, then grid column; a zero tail below), the block of
Ω for the cell offsets a ≤ a' of the kernel is

    Ω[a, a'] = Σ_{n, p} x(p + a) x(p + a')ᵀ = S_δ − Σ_{u ∈ E_a} X[u] X[u + δ]ᵀ,
    S_δ = Σ_u X[u] X[u + δ]ᵀ,   δ = flat(a') − flat(a),

where u runs over every cell, ``flat`` is the row offset of a grid position, and E_a are the cells
that are not x(p + a) for any output position p (the grid rows and columns outside the window
that offset a sees; about a tenth of the grid for conv1). S_δ depends only on δ, so the
c_h·c_w·(c_h·c_w+1)/2 blocks need only the distinct δ (5 for 2 × 2 cells) products over the whole
grid plus one small product over E_a per block. Reading the pairs (u, u + δ) off the flat rows
counts some that wrap around a grid row or into the next example; those u are all in E_a, so the
correction removes them with the rest.

FLOPs per example, conv1: 2w²(5·441 + 10·41) = 21.4 M, against (K+1)²·T = 26.4 M for a symmetric
product of the patch rows and 39.6 M for ``factors.gram``'s blocked one. :func:`worthwhile`
takes the cells where their GEMMs are at most :data:`GAIN` of the blocked product's and at least
:data:`MIN_WIDTH` wide (narrower GEMMs run far below the BLAS rate): conv1 yes (0.54); conv2
4×4/2 (0.71), conv3 3×3/1 (0.83) and MinAtar's 3×3/1 (4 values per cell) no.

KFC (Grosse & Martens 2016, §3.1) defines Ω over the im2col patches, and openai/baselines
``kfac.py`` (``_extract_patches``, then one ``matmul``) and alecwangcq/KFAC-Pytorch
(``utils/kfac_utils.py`` ``_extract_patches``) both build that matrix; the cells give the same Ω
(``tests/test_cell_moment.py``: against patches sliced out by loops) without it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import torch

from kfac_bench.curvature.adapters import ConvInput, LayerBatch, scratch

#: cells only when their products are at most this fraction of the blocked product's FLOPs
GAIN = 0.6
#: and each cell at least this wide
MIN_WIDTH = 32
#: rows per chunk of :func:`shifted_products` (4 MiB of 64-wide float32 cells: the chunk and its
#: shifted partners stay in cache for every shift)
CHUNK_ROWS = 16384


@dataclass(frozen=True)
class CellGrid:
    """The cell geometry of one convolution's input (module docstring)."""

    batch: int
    channels: int
    stride: tuple[int, int]  # (s_h, s_w)
    cells: tuple[int, int]  # (c_h, c_w) cells per kernel: k = c·s
    out: tuple[int, int]  # (O_h, O_w) output positions

    @classmethod
    def of(cls, conv: ConvInput) -> CellGrid | None:
        """The grid of ``conv``, or None when its stride does not divide its kernel."""
        (kh, kw), (sh, sw) = conv.kernel, conv.stride
        if kh % sh or kw % sw:
            return None
        b, c, h, w = conv.input.shape
        (ph, pw) = conv.padding
        out = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        return cls(b, c, (sh, sw), (kh // sh, kw // sw), out)

    @property
    def grid(self) -> tuple[int, int]:
        """(G_h, G_w): the grid rows and columns some patch covers."""
        return self.out[0] + self.cells[0] - 1, self.out[1] + self.cells[1] - 1

    @property
    def width(self) -> int:
        return self.channels * self.stride[0] * self.stride[1]

    @cached_property
    def offsets(self) -> list[tuple[int, int]]:
        """The kernel's cell offsets a = (a_h, a_w), in flat order."""
        return [(i, j) for i in range(self.cells[0]) for j in range(self.cells[1])]

    @cached_property
    def deltas(self) -> list[int]:
        """The distinct row offsets δ = flat(a') − flat(a), a ≤ a', of the S_δ products."""
        offsets = self.offsets
        return sorted(
            {self.flat(b) - self.flat(a) for i, a in enumerate(offsets) for b in offsets[i:]}
        )

    def flat(self, a: tuple[int, int]) -> int:
        return a[0] * self.grid[1] + a[1]

    def outside(self, a: tuple[int, int]) -> torch.Tensor:
        """E_a as flat cell indices within one example: grid rows outside the rows offset a sees,
        then, on the rows it sees, the columns outside (built once per geometry; read-only)."""
        return _outside(self, a)

    def flops(self) -> int:
        """Per example: the distinct-δ products plus the corrections (module docstring)."""
        offsets = self.offsets
        corrections = sum(len(self.outside(a)) * (len(offsets) - i) for i, a in enumerate(offsets))
        return 2 * self.width**2 * (len(self.deltas) * self.grid[0] * self.grid[1] + corrections)


@functools.cache
def _outside(grid: CellGrid, a: tuple[int, int]) -> torch.Tensor:
    (gh, gw), (oh, ow) = grid.grid, grid.out
    rows = [r for r in range(gh) if not a[0] <= r < a[0] + oh]
    cols = [c for c in range(gw) if not a[1] <= c < a[1] + ow]
    cells = [r * gw + c for r in rows for c in range(gw)]
    cells += [r * gw + c for r in range(a[0], a[0] + oh) for c in cols]
    return torch.tensor(cells, dtype=torch.long)


def worthwhile(conv: ConvInput | None, columns: int) -> bool:
    """Cells for Ω of this convolution (CPU, s | k, :data:`MIN_WIDTH`, :data:`GAIN`), whose
    patch rows would be ``columns`` wide."""
    grid = CellGrid.of(conv) if conv is not None and conv.input.device.type == "cpu" else None
    return grid is not None and _fewer_flops(grid, columns)


@functools.cache
def _fewer_flops(grid: CellGrid, columns: int) -> bool:
    if grid.width < MIN_WIDTH:
        return False
    blocked = 2 * columns**2 * grid.out[0] * grid.out[1] * (0.75 if columns >= 256 else 1.0)
    return grid.flops() <= GAIN * blocked


def cell_rows(batch: LayerBatch, grid: CellGrid) -> torch.Tensor:
    """(B·G_h·G_w + tail, w) cell rows, (C_in, s_h, s_w) within a cell, then max δ zero rows;
    written once into the batch's own workspace slot and kept as ``batch.cell_rows`` (the
    training backward's weight gradient reads them again, :func:`cell_weight_gradient`)."""
    if batch.cell_rows is not None:
        return batch.cell_rows
    conv = batch.conv_input
    (gh, gw), (sh, sw) = grid.grid, grid.stride
    b, c = grid.batch, grid.channels
    n = b * gh * gw
    tail = grid.flat(grid.offsets[-1])
    rows = scratch(f"cells{batch.scratch_slot}", (n + tail, grid.width), conv.padded)
    rows[n:] = 0.0
    cells = conv.padded[:, :, : gh * sh, : gw * sw].reshape(b, c, gh, sh, gw, sw)
    rows[:n].view(b, gh, gw, c, sh, sw).copy_(cells.permute(0, 2, 4, 1, 3, 5))
    batch.cell_rows = rows
    return rows


def cell_second_moment(batch: LayerBatch, homogeneous: bool, scale: float = 1.0) -> torch.Tensor:
    """scale · Ω, Ω = (1/B) Σ_{n,t} ā āᵀ, from the cells of ``batch``'s convolution input:
    shape (K+1)² in im2col order (C_in, k_h, k_w) with the homogeneous coordinate last (K²
    without), as ``factors.patch_second_moment``."""
    grid = CellGrid.of(batch.conv_input)
    rows = cell_rows(batch, grid)
    n, w = grid.batch * grid.grid[0] * grid.grid[1], grid.width
    cells = rows[:n]
    offsets = grid.offsets
    k = len(offsets) * w
    omega = rows.new_empty(k, k)
    sums = rows.new_empty(k)
    total = cells.sum(dim=0)
    starts = torch.arange(grid.batch, device=rows.device)[:, None] * (n // grid.batch)
    products = dict(zip(grid.deltas, shifted_products(cells, rows, grid.deltas)))
    for i, a in enumerate(offsets):
        outside = (starts + grid.outside(a).to(rows.device)[None, :]).reshape(-1)
        left = cells.index_select(0, outside)  # (B·|E_a|, w)
        sums[i * w : (i + 1) * w] = total - left.sum(dim=0)
        deltas = torch.tensor([grid.flat(b) - grid.flat(a) for b in offsets[i:]])
        # every partner X[u + δ] of the cells outside, for every a' ≥ a, as one (B·|E_a|, m·w)
        partners = rows.index_select(
            0, (outside[:, None] + deltas[None, :].to(rows.device)).view(-1)
        )
        corrections = left.T @ partners.view(left.shape[0], -1)
        for m, (j, delta) in enumerate(zip(range(i, len(offsets)), deltas.tolist())):
            block = products[delta] - corrections[:, m * w : (m + 1) * w]
            omega[i * w : (i + 1) * w, j * w : (j + 1) * w] = block
            if j != i:
                omega[j * w : (j + 1) * w, i * w : (i + 1) * w] = block.T
    order = _im2col_order(grid).to(rows.device)
    size = k + 1 if homogeneous else k
    out = rows.new_empty(size, size)
    out[:k, :k] = omega[order][:, order]
    if homogeneous:
        out[k, :k] = out[:k, k] = sums[order]
        out[k, k] = grid.batch * grid.out[0] * grid.out[1]
    return out.mul_(scale / grid.batch)


def cell_weight_gradient(batch: LayerBatch, grad_output: torch.Tensor) -> torch.Tensor:
    """[∂L/∂W, ∂L/∂b] = Σ_{n,p} g_{n,p} ā_{n,p}ᵀ, (C_out, K+1) in im2col order with the bias
    column last, from the cell rows :func:`cell_second_moment` wrote (``batch.cell_rows``).

    The gradient (B, C_out, O_h, O_w) is laid on the cell grid, zero where no position is
    (G, (C_out)), so the block of offset a is the product with the rows shifted by flat(a),
    Σ_u G[u] X[u + flat(a)]ᵀ (all offsets in one pass, :func:`shifted_products`). Used by
    ``weight_grad.backward_reusing_patches`` in place of the patch rows, which the cells never
    built.
    """
    grid = CellGrid.of(batch.conv_input)
    rows = cell_rows(batch, grid)
    (gh, gw), (oh, ow), b = grid.grid, grid.out, grid.batch
    c_out, n, w = grad_output.shape[1], b * gh * gw, grid.width
    laid = grad_output.new_zeros(b, gh, gw, c_out)
    laid[:, :oh, :ow].copy_(grad_output.permute(0, 2, 3, 1))
    laid = laid.view(n, c_out)
    k = len(grid.offsets) * w
    full = grad_output.new_empty(c_out, k + 1)
    blocks = torch.cat(shifted_products(laid, rows, [grid.flat(a) for a in grid.offsets]), dim=1)
    full[:, :k] = blocks[:, _im2col_order(grid).to(blocks.device)]
    full[:, k] = laid.sum(dim=0)
    return full


def shifted_products(
    left: torch.Tensor, rows: torch.Tensor, shifts: list[int]
) -> list[torch.Tensor]:
    """[Σ_u left[u] rows[u + s]ᵀ for s in shifts], each (m, w), for left (n, m) and rows
    (n + max shift, w), in one pass over the rows.

    One GEMM per shift over all n rows reads the (n, w) operands from memory once per shift:
    Nature conv1's five S_δ read 5 × 2 × 72 MB and ran at the memory's speed on a 2-vCPU AMD EPYC
    VM. Chunks of :data:`CHUNK_ROWS` rows are multiplied with every shift while they are in
    cache (there, alone: S_δ 94 → 84 ms, the weight gradient's four products 53 → 42 ms; inside a
    whole update the statistic 150 → 142 ms, the gradient 64 → 53 ms); the sums are
    accumulated chunk by chunk, so the last bits differ from one GEMM's.
    """
    n = left.shape[0]
    out = [left.new_empty(left.shape[1], rows.shape[1]) for _ in shifts]
    for start in range(0, n, CHUNK_ROWS):
        end = min(n, start + CHUNK_ROWS)
        chunk = left[start:end].T
        for product, shift in zip(out, shifts):
            if start == 0:
                torch.mm(chunk, rows[shift + start : shift + end], out=product)
            else:
                product.addmm_(chunk, rows[shift + start : shift + end])
    return out


@functools.cache
def _im2col_order(grid: CellGrid) -> torch.Tensor:
    """order[p] = the cell-space index (offset a, then C_in, s_h, s_w) of im2col column p
    (built once per geometry; read-only)."""
    (sh, sw), (ch, cw) = grid.stride, grid.cells
    kh, kw = ch * sh, cw * sw
    channel = torch.arange(grid.channels)[:, None, None]
    row, col = torch.arange(kh)[None, :, None], torch.arange(kw)[None, None, :]
    offset = (row // sh) * cw + col // sw
    within = channel * sh * sw + (row % sh) * sw + col % sw
    return (offset * grid.width + within).reshape(-1)
