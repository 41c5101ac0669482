"""The variant contract and the statistics the variants share.

Notation (DESIGN.md §3; KFC, Grosse & Martens 2016): B examples, T positions, a_{n,t} the input
patch, ā = [a; 1] with the homogeneous coordinate **last**, ĝ_{n,t} the per-example derivative.

- Ω  = (1/B) Σ_n Σ_t ā āᵀ                       :func:`patch_second_moment`
- Γ  = (1/(B·T)) Σ_n Σ_t ĝ ĝᵀ                   :func:`deriv_second_moment`
- (1/B) Σ_n (Σ_t ĝ)(Σ_t ĝ)ᵀ                      :func:`summed_deriv_second_moment`
- (1/B) Σ_n ā_n ā_nᵀ with ā_n = mean_t ā          :func:`mean_patch_second_moment`

The patch rows are written once, with the homogeneous coordinate as their last column, so Ω (its
bias row/column Σ ā and corner B·T included) is one GEMM; see ``adapters.LayerBatch`` for what is
materialised when (issue 6 performance notes).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from kfac_bench.curvature import cell_moment, syrk
from kfac_bench.curvature.adapters import LayerBatch, layer_batch


@dataclass(frozen=True)
class Factors:
    """One batch's factors for one layer (no averaging).

    A: (D_in[+1])² activation factor, homogeneous coordinate last when the bias is folded in.
    G: (D_out)² gradient factor.
    bias_G: (D_out)² the bias's own block when the strategy preconditions it separately, else None.
    """

    A: torch.Tensor
    G: torch.Tensor
    bias_G: torch.Tensor | None = None


@dataclass(frozen=True)
class InitRule:
    """How a running average starts (DESIGN.md §3 table, last column).

    - ``first``: m_1 = S_1, then m_k = d·m_{k−1} + (1−d)·S_k
    - ``identity``: m_0 = I, then the EMA (so m_1 = d·I + (1−d)·S_1)
    - ``zeros-average``: m_0 = 0, m_k = m_{k−1} + S_k/steps for k ≤ steps, then the EMA
    """

    kind: Literal["first", "identity", "zeros-average"]
    steps: int = 10


class FactorStrategy(abc.ABC):
    """A variant: how one batch of (input, grad_output) becomes Kronecker factors.

    Subclasses set ``name``, ``summary`` (one line for ``kfac-bench variants``) and
    ``running_init``, and implement :meth:`from_batch`. The trainer never branches on ``name``.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    running_init: ClassVar[InitRule]

    def factors(
        self, module: nn.Module, layer_input: torch.Tensor, grad_output: torch.Tensor
    ) -> Factors:
        """Factors of one batch. ``grad_output`` is the gradient of a batch-mean loss."""
        return self.from_batch(layer_batch(module, layer_input, grad_output))

    @abc.abstractmethod
    def from_batch(self, batch: LayerBatch) -> Factors:
        """Factors from the canonical (B, T, K) patches and (B, T, C_out) derivatives."""

    def __repr__(self) -> str:
        return f"<variant {self.name!r}>"


def patch_second_moment(batch: LayerBatch, homogeneous: bool, scale: float = 1.0) -> torch.Tensor:
    """scale · Ω with Ω = (1/B) Σ_{n,t} ā āᵀ, shape (K+1)² with the bias coordinate last (K²
    without it).

    One GEMM over the (B·T, K+1) patch rows whose last column is the homogeneous 1, so the
    bias row/column Σ ā and the corner B·T come out of the same product
    (:meth:`LayerBatch.patch_rows` writes those rows once). ``scale`` (a variant's 1/T²) is the
    product's α: no pass over the (K+1)² result of its own.

    A convolution whose stride divides its kernel (Nature conv1) takes it from its input's stride
    cells instead, with no patch rows (``curvature/cell_moment.py``), where
    ``cell_moment.worthwhile`` says that is cheaper and the rows are not already there.
    """
    columns = batch.in_features + int(homogeneous)
    if not batch.has_patch_rows and cell_moment.worthwhile(batch.conv_input, columns):
        return cell_moment.cell_second_moment(batch, homogeneous, scale)
    rows = batch.patch_rows(homogeneous)
    return gram(rows, scale / batch.batch_size)


def deriv_second_moment(batch: LayerBatch, scale: float = 1.0) -> torch.Tensor:
    """scale · Γ with Γ = (1/(B·T)) Σ_{n,t} ĝ ĝᵀ, shape C_out².

    With ĝ = B·g this is (B/T)·Σ g gᵀ: the scale is applied once, as the product's α, instead of
    to every row of ĝ (``scale``: a variant's T²).

    A convolution's gradient arrives as (B, C, T): Σ_n g_n g_nᵀ over the per-example (C, T)
    matrices (one batched GEMM and a sum over n) reads it in place, where the single GEMM needs
    the (B·T, C) rows copied first. Used while the per-example products, B·C², are at most
    twice the gradient, i.e. C ≤ 2T (2-core VM, µs, copy + GEMM vs batched: MinAtar conv
    (320, 16, 64) 293 vs 132; Nature conv1 (640, 32, 400) 7 992 vs 3 192, conv2 (640, 64, 81)
    3 414 vs 2 441, conv3 (640, 64, 49) 2 052 vs 1 679).
    """
    alpha = scale * batch.batch_size / batch.positions
    channels_first = batch.grad_channels_first()
    if channels_first is not None and channels_first.shape[1] <= 2 * channels_first.shape[2]:
        return torch.bmm(channels_first, channels_first.transpose(1, 2)).sum(dim=0).mul_(alpha)
    return gram(batch.grad_rows(), alpha)


def summed_deriv_second_moment(batch: LayerBatch) -> torch.Tensor:
    """(1/B) Σ_n (Σ_t ĝ_{n,t})(Σ_t ĝ_{n,t})ᵀ, shape C_out² (the exact bias Fisher block).

    = B·Σ_n s_n s_nᵀ with s_n = Σ_t g_{n,t} (ĝ = B·g).
    """
    summed = batch.grad_sums()
    return gram(summed, float(batch.batch_size))


def mean_patch_second_moment(batch: LayerBatch, homogeneous: bool) -> torch.Tensor:
    """(1/B) Σ_n ā_n ā_nᵀ with ā_n = mean_t ā_{n,t} (mean of the ones is 1).

    ā_n comes from :meth:`LayerBatch.patch_means`, a reduction of the strided patch view: the
    (B·T, K) im2col matrix is never built for this statistic.
    """
    means = batch.patch_means()
    if homogeneous:
        means = torch.cat([means, torch.ones_like(means[:, :1])], dim=1)
    return gram(means, 1.0 / batch.batch_size)


# the narrowest diagonal block of the blocked symmetric product on CPU (see :func:`gram`)
SYMMETRIC_BLOCK = 128


def gram(rows: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · rowsᵀ rows, shape (K, K), for rows (N, K).

    The product is symmetric, so only one triangle needs computing. On CPU, for products at least
    ``syrk.MIN_COLUMNS`` wide, that is BLAS ``syrk`` itself (``curvature/syrk.py``: MKL's, through
    the symbols torch's wheel exports, one triangle then mirrored). Where that BLAS is missing,
    the columns are split in halves [X₁ X₂] recursively: the diagonal
    blocks X₁ᵀX₁ and X₂ᵀX₂ recurse, the off-diagonal block X₁ᵀX₂ is one GEMM and is mirrored
    (the blocked SYRK of Goto & van de Geijn, "High-performance implementation of the level-3
    BLAS", *ACM TOMS* 35(1), 2008). Each level halves the work
    on the diagonal: ≈ (1 + 2^-d)/2 of a GEMM's FLOPs at depth d, on the same BLAS and threads as
    the rest of torch. Blocks narrower than 2·``SYMMETRIC_BLOCK`` columns, and every product on a
    GPU, are one GEMM. The scale is BLAS's α: no extra pass over the result.
    """
    kernel = gram_kernel(rows)
    if kernel == "mkl-syrk":
        product = syrk.symmetric_product(rows, scale)
        if product is not None:
            return product
    if kernel == "gemm":
        return _scaled_product(rows, rows, scale)
    out = rows.new_empty(rows.shape[1], rows.shape[1])
    _symmetric_blocks(rows, scale, out, 0, rows.shape[1])
    return out


def gram_kernel(rows: torch.Tensor) -> Literal["mkl-syrk", "blocked", "gemm"]:
    """The product :func:`gram` uses for these (N, K) rows (``mkl-syrk`` falls back to
    ``blocked`` for a layout BLAS cannot read in place)."""
    if syrk.worthwhile(rows):
        return "mkl-syrk"
    if rows.device.type != "cpu" or rows.shape[1] < 2 * SYMMETRIC_BLOCK:
        return "gemm"
    return "blocked"


def _scaled_product(left: torch.Tensor, right: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · leftᵀ right as one GEMM (α = scale, β = 0)."""
    return torch.addmm(left.new_zeros(()), left.T, right, beta=0.0, alpha=scale)


def _symmetric_blocks(rows: torch.Tensor, scale: float, out: torch.Tensor, lo: int, hi: int):
    """Fill out[lo:hi, lo:hi] with scale · rows[:, lo:hi]ᵀ rows[:, lo:hi] (:func:`gram`)."""
    if hi - lo < 2 * SYMMETRIC_BLOCK:
        out[lo:hi, lo:hi] = _scaled_product(rows[:, lo:hi], rows[:, lo:hi], scale)
        return
    mid = (lo + hi + 1) // 2
    _symmetric_blocks(rows, scale, out, lo, mid)
    _symmetric_blocks(rows, scale, out, mid, hi)
    off_diagonal = _scaled_product(rows[:, lo:mid], rows[:, mid:hi], scale)
    out[lo:mid, mid:hi] = off_diagonal
    out[mid:hi, lo:mid] = off_diagonal.T
