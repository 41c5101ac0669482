"""Layer geometry: one adapter per layer type turns (input, grad_output) into canonical form.

Canonical form (:class:`LayerBatch`), with B examples and T positions per example:

- ``patches`` (B, T, K): the input seen by each output position. Linear: T = 1 (or the product of
  any middle dimensions), K = in_features. Conv2d: T = Oh·Ow, K = C_in·kh·kw in PyTorch weight
  order ``(C_in, kh, kw)``, matching ``weight.view(C_out, -1)`` (im2col).
- ``derivs`` (B, T, C_out): per-example derivatives ĝ = B · grad_output, where ``grad_output`` is
  the gradient of a batch-**mean** loss at the layer output (DESIGN.md §2).

No statistic lives here (backpack style): the variants turn a LayerBatch into factors.

Performance (issue 6; numbers from ``make bench`` on the 2-core CI machine, Nature CNN conv1 at
B = 640, i.e. B·T = 256 000 patch rows of K = 256): a LayerBatch is *lazy*. It keeps the layer's
raw input and output gradient and builds only what a statistic asks for:

- :meth:`LayerBatch.patch_rows` writes the im2col rows **once**, straight from a strided view
  (``Tensor.unfold`` twice, as alecwangcq/KFAC-Pytorch ``utils/kfac_utils.py`` ``_extract_patches``)
  into a (B·T, K+1) buffer whose last column is the homogeneous 1, so Ω is a single GEMM.
  ``F.unfold`` followed by a transposed reshape wrote the 262 MB patch matrix twice.
- :meth:`LayerBatch.patch_means` (K-FAC-reduce's ā_n = mean_t a_{n,t}) is two small matrix
  products with the input (:func:`conv2d_patch_means`): no patch matrix at all.
- :meth:`LayerBatch.grad_rows` / :meth:`LayerBatch.grad_sums` return the *unscaled* output
  gradient; the statistics fold the factor B of ĝ = B·g into one scalar on the C² result.
  :meth:`LayerBatch.grad_channels_first` hands a convolution's gradient over in its own
  (B, C, T) layout, so Γ needs no (B, T, C) copy (``factors.deriv_second_moment``).

- :attr:`LayerBatch.conv_input` keeps a convolution's input with its kernel, stride and padding
  (:class:`ConvInput`, dilation 1) for statistics that read the input itself:
  ``curvature/cell_moment.py`` builds Ω of Nature conv1 from its stride cells and leaves the rows
  it wrote in :attr:`LayerBatch.cell_rows` for the training backward.

``patches`` and ``derivs`` stay available (built on first access) for any other consumer.

Inside :func:`using_workspace` (what ``KFAC`` does around its statistics) the patch and gradient
rows are written into reusable buffers of a :class:`Workspace` instead of fresh allocations: a
fresh 263 MB buffer is handed back to the OS when freed and costs page faults on its next first
touch (~0.1 s per update for the Nature CNN on the 2-core machine). Rows built that way are only
valid until the next LayerBatch of the same workspace builds its own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedLayerError(ValueError):
    """A layer K-FAC cannot precondition; the message names the layer and the reason."""


#: Conv kernels at least this wide are copied row-major (see :meth:`LayerBatch.patch_rows`).
ROW_MAJOR_MIN_KW = 8


class Workspace:
    """Scratch buffers reused across statistics: one flat buffer per slot, grown when needed."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(slot)
        if (
            buffer is None
            or buffer.numel() < numel
            or buffer.dtype != dtype
            or buffer.device != torch.device(device)
        ):
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[slot] = buffer
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()


_active = threading.local()


@contextmanager
def using_workspace(workspace: Workspace | None) -> Iterator[None]:
    """Let the adapters build rows in ``workspace`` (this thread only) for the block."""
    previous = getattr(_active, "workspace", None)
    _active.workspace = workspace
    try:
        yield
    finally:
        _active.workspace = previous


def scratch(slot: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like ``like``: in the active workspace's ``slot`` inside
    :func:`using_workspace`, else freshly allocated."""
    workspace = getattr(_active, "workspace", None)
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(slot, shape, like.dtype, like.device)


@dataclass(frozen=True)
class ConvInput:
    """A Conv2d's input with what its patches need: (B, C_in, H, W), kernel, stride, padding
    (dilation 1, groups 1). For statistics that read the input itself instead of its patches
    (``curvature/cell_moment.py``)."""

    input: torch.Tensor
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @cached_property
    def padded(self) -> torch.Tensor:
        """The zero-padded input (the input itself without padding; one copy, kept, with)."""
        ph, pw = self.padding
        return F.pad(self.input, (pw, pw, ph, ph)) if ph or pw else self.input


class LayerBatch:
    """One layer's batch in canonical form, built lazily from the raw tensors.

    ``LayerBatch(patches, derivs, has_bias)`` wraps ready-made (B, T, K) patches and (B, T, C)
    derivatives ĝ. The adapters below use :meth:`conv2d` / :meth:`linear` instead, which keep
    the input and ``grad_output`` and compute rows, means and sums on demand (module docstring).
    """

    def __init__(self, patches: torch.Tensor, derivs: torch.Tensor, has_bias: bool) -> None:
        self.has_bias = has_bias
        self.batch_size = patches.shape[0]
        self.positions = patches.shape[1]
        self._patches: torch.Tensor | None = patches
        self._means: Callable[[], torch.Tensor] | None = None
        self._window: torch.Tensor | None = None  # conv: (B, C_in, Oh, Ow, kh, kw) strided view
        self._rows: torch.Tensor | None = None  # (B·T, K+1) with the homogeneous 1 last
        self._grad = derivs / self.batch_size  # (B, T, C) gradient of the batch-mean loss
        self._derivs: torch.Tensor | None = derivs
        self.conv_input: ConvInput | None = None
        self.cell_rows: torch.Tensor | None = None  # written by curvature/cell_moment.py
        self.scratch_slot = ""

    # --- constructors used by the adapters ----------------------------------------------------
    @classmethod
    def _lazy(
        cls,
        window: torch.Tensor | None,
        patches: torch.Tensor | None,
        grad: torch.Tensor,
        has_bias: bool,
        means: Callable[[], torch.Tensor] | None = None,
        conv_input: ConvInput | None = None,
    ) -> LayerBatch:
        self = cls.__new__(cls)
        self.has_bias = has_bias
        self.conv_input = conv_input
        self.cell_rows = None
        self._means = means
        self._window = window
        self._patches = patches
        if window is not None:
            self.batch_size = window.shape[0]
            self.positions = window.shape[2] * window.shape[3]
        else:
            self.batch_size, self.positions = patches.shape[0], patches.shape[1]
        self._rows = None
        self._grad = grad
        self._derivs = None
        # suffix of the workspace slot the patch rows go to: KFAC gives each layer its own, so a
        # layer's rows outlive the next layer's statistic (curvature/weight_grad.py reuses them)
        self.scratch_slot = ""
        return self

    # --- what the statistics use ----------------------------------------------------------------
    @property
    def in_features(self) -> int:
        """K: the patch length (C_in·kh·kw for Conv2d)."""
        if self._window is not None:
            _, c, _, _, kh, kw = self._window.shape
            return c * kh * kw
        return self._patches.shape[2]

    @property
    def has_patch_rows(self) -> bool:
        """Whether :meth:`patch_rows` has written its rows already (a statistic that can do
        without them takes them instead once they are there)."""
        return self._rows is not None

    @property
    def _patch_slot(self) -> str:
        return f"patches{self.scratch_slot}"

    def patch_rows(self, homogeneous: bool) -> torch.Tensor:
        """(B·T, K[+1]) patch rows, the homogeneous coordinate 1 last when ``homogeneous``.

        Conv: one copy from the strided window into a buffer (cached) whose layout follows the
        longest contiguous run of the source: row-major (B·T, K+1) when a kernel row is long
        (kw ≥ :data:`ROW_MAJOR_MIN_KW`, Nature conv1's 8 taps), else column-major, i.e. a
        (K+1, B·T) buffer returned transposed (runs of output positions; 15–45 % faster for
        conv2/conv3 and MinAtar's 3×3 conv on the 2-core machine). Either way BLAS reads the
        result directly, and without the homogeneous coordinate it is a column slice.
        Linear: the input itself when no coordinate is needed, else one copy beside a 1 column.
        """
        k = self.in_features
        if self._window is None:
            rows = self._patches.reshape(-1, k)
            if not homogeneous:
                return rows
            if self._rows is None:
                self._rows = scratch(self._patch_slot, (rows.shape[0], k + 1), rows)
                self._rows[:, :k].copy_(rows)
                self._rows[:, k] = 1.0
            return self._rows
        if self._rows is None:
            b, c, oh, ow, kh, kw = self._window.shape
            if kw >= ROW_MAJOR_MIN_KW:
                buffer = scratch(self._patch_slot, (b, oh, ow, k + 1), self._window)
                buffer[..., :k].view(b, oh, ow, c, kh, kw).copy_(
                    self._window.permute(0, 2, 3, 1, 4, 5)
                )
                buffer[..., k] = 1.0
                self._rows = buffer.view(b * oh * ow, k + 1)
            else:
                buffer = scratch(self._patch_slot, (k + 1, b, oh, ow), self._window)
                buffer[:k].view(c, kh, kw, b, oh, ow).copy_(self._window.permute(1, 4, 5, 0, 2, 3))
                buffer[k] = 1.0
                self._rows = buffer.view(k + 1, b * oh * ow).T
        return self._rows if homogeneous else self._rows[:, :k]

    def patch_means(self) -> torch.Tensor:
        """(B, K): ā_n = mean_t a_{n,t} without the homogeneous coordinate.

        Conv: two small matrix products with the input (:func:`conv2d_patch_means`), no im2col.
        """
        if self._means is not None:
            return self._means()
        if self._window is None:
            return self._patches.mean(dim=1)
        return self._window.mean(dim=(2, 3)).reshape(self.batch_size, -1)

    def grad_rows(self) -> torch.Tensor:
        """(B·T, C_out) rows of the *unscaled* gradient g (ĝ = B·g)."""
        c = self._grad.shape[-1]
        if self._grad.is_contiguous():
            return self._grad.view(-1, c)
        rows = scratch("grads", tuple(self._grad.shape), self._grad)
        rows.copy_(self._grad)  # conv: (B, C, T) -> (B, T, C)
        return rows.view(-1, c)

    def grad_channels_first(self) -> torch.Tensor | None:
        """(B, C_out, T) unscaled gradient g when that is how it is stored (a convolution's
        ``grad_output``, contiguous in that order), else None. Lets Γ be summed over examples
        from per-example products without the (B, T, C) copy :meth:`grad_rows` makes."""
        if self._grad.is_contiguous():
            return None
        channels_first = self._grad.transpose(1, 2)
        return channels_first if channels_first.is_contiguous() else None

    def grad_sums(self) -> torch.Tensor:
        """(B, C_out): Σ_t g_{n,t}, unscaled."""
        return self._grad.sum(dim=1)

    # --- the canonical tensors themselves (built on first access) -----------------------------
    @property
    def patches(self) -> torch.Tensor:
        """(B, T, K) input patches."""
        if self._patches is None:
            k = self.in_features
            self._patches = self.patch_rows(homogeneous=True)[:, :k].reshape(
                self.batch_size, self.positions, k
            )
        return self._patches

    @property
    def derivs(self) -> torch.Tensor:
        """(B, T, C_out) per-example derivatives ĝ = B · grad_output."""
        if self._derivs is None:
            self._derivs = self._grad * self.batch_size
        return self._derivs


def linear_batch(
    module: nn.Linear, layer_input: torch.Tensor, grad_output: torch.Tensor
) -> LayerBatch:
    """Linear: input (B, ..., K), grad_output (B, ..., C_out); middle dims become positions."""
    batch = layer_input.shape[0]
    patches = layer_input.reshape(batch, -1, module.in_features)
    grad = grad_output.reshape(batch, -1, module.out_features)
    return LayerBatch._lazy(None, patches, grad, module.bias is not None)


def conv2d_window(module: nn.Conv2d, layer_input: torch.Tensor) -> torch.Tensor:
    """(B, C_in, Oh, Ow, kh, kw) strided view of every patch (a copy only if padded).

    ``window[n, c, i, j, u, v] = x_pad[n, c, s_h·i + d_h·u, s_w·j + d_w·v]``: the im2col patch of
    output position (i, j) in ``(C_in, kh, kw)`` order, as ``F.unfold`` (and
    alecwangcq/KFAC-Pytorch ``_extract_patches``) but without materialising it. Dilation d is a
    window of span d·(k−1)+1 sliced with step d.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
    )
    x = layer_input
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    window = x.unfold(2, dh * (kh - 1) + 1, sh)[..., ::dh]
    window = window.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dw]
    return window  # (B, C_in, Oh, Ow, kh, kw)


def conv2d_batch(
    module: nn.Conv2d, layer_input: torch.Tensor, grad_output: torch.Tensor
) -> LayerBatch:
    """Conv2d: input (B, C_in, H, W), grad_output (B, C_out, Oh, Ow) -> patches (B, Oh·Ow, K)."""
    check_conv2d(module)
    batch = layer_input.shape[0]
    window = conv2d_window(module, layer_input)
    positions = window.shape[2] * window.shape[3]
    if grad_output.shape[2] * grad_output.shape[3] != positions:
        raise UnsupportedLayerError(
            f"conv layer {module}: {positions} input patches vs "
            f"{grad_output.shape[2] * grad_output.shape[3]} outputs"
        )
    grad = grad_output.reshape(batch, module.out_channels, -1).transpose(1, 2)
    return LayerBatch._lazy(
        window,
        None,
        grad,
        module.bias is not None,
        means=lambda: conv2d_patch_means(module, layer_input),
        conv_input=ConvInput(layer_input, module.kernel_size, module.stride, module.padding)
        if module.dilation == (1, 1)
        else None,
    )


def _position_selector(
    size: int, kernel: int, stride: int, padding: int, dilation: int, like: torch.Tensor
) -> torch.Tensor:
    """(kernel, size) 0/1 matrix S with S[u, h] = #{i : stride·i − padding + dilation·u = h}.

    Summing an input row over the output positions i for every kernel offset u is S @ row;
    taps that fall into the zero padding have no column, so padding needs no copy.
    """
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    rows = (
        torch.arange(out, device=like.device)[None, :] * stride
        + torch.arange(kernel, device=like.device)[:, None] * dilation
        - padding
    )
    valid = (rows >= 0) & (rows < size)
    selector = torch.zeros(kernel, size, dtype=like.dtype, device=like.device)
    selector.scatter_add_(1, rows.clamp(0, size - 1), valid.to(like.dtype))
    return selector


def conv2d_patch_means(module: nn.Conv2d, layer_input: torch.Tensor) -> torch.Tensor:
    """(B, K) mean patch ā_n = mean_t a_{n,t} of a Conv2d, in ``(C_in, kh, kw)`` order.

    The sum over output positions separates into rows and columns:
    Σ_{i,j} x[s_h·i + d_h·u, s_w·j + d_w·v] = (S_h x S_wᵀ)[u, v] with the selectors of
    :func:`_position_selector`, so the input is read once by two small matrix products and no
    (B·T, K) patch matrix exists (the cheap path of K-FAC-reduce, Eschenhagen et al. 2023; and
    openai/baselines ``approxT2``, which averages the extracted patches instead).
    """
    b, _, h, w = layer_input.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
    )
    rows = _position_selector(h, kh, sh, ph, dh, layer_input)
    cols = _position_selector(w, kw, sw, pw, dw, layer_input)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    sums = torch.matmul(torch.matmul(rows, layer_input), cols.T)  # (B, C_in, kh, kw)
    return (sums / (oh * ow)).reshape(b, -1)


def check_conv2d(module: nn.Conv2d) -> None:
    """Raise UnsupportedLayerError for Conv2d settings whose patches are not plain im2col."""
    if module.groups != 1:
        raise UnsupportedLayerError(f"{module}: grouped convolutions (groups={module.groups})")
    if module.padding_mode != "zeros":
        raise UnsupportedLayerError(f"{module}: padding_mode={module.padding_mode!r} (only zeros)")
    if isinstance(module.padding, str):
        raise UnsupportedLayerError(f"{module}: string padding {module.padding!r}; use integers")


ADAPTERS = {nn.Linear: linear_batch, nn.Conv2d: conv2d_batch}


def is_supported(module: nn.Module) -> bool:
    return type(module) in ADAPTERS


def layer_batch(
    module: nn.Module, layer_input: torch.Tensor, grad_output: torch.Tensor
) -> LayerBatch:
    """Dispatch to the adapter for ``type(module)``; other types raise UnsupportedLayerError."""
    adapter = ADAPTERS.get(type(module))
    if adapter is None:
        names = ", ".join(t.__name__ for t in ADAPTERS)
        raise UnsupportedLayerError(
            f"K-FAC has no adapter for {type(module).__name__}; supported: {names}"
        )
    return adapter(module, layer_input, grad_output)
