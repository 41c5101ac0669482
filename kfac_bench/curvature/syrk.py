"""BLAS ``syrk`` for the factor statistics: scale · XᵀX computing one triangle, at BLAS speed.

torch has no symmetric rank-k product, but the x86 Linux torch wheels link Intel MKL statically
and export MKL's level-3 ``syrk`` entry points from ``libtorch_cpu`` (``mkl_blas_ssyrk`` /
``mkl_blas_dsyrk``, the Fortran-convention routines behind ``ssyrk_``/``dsyrk_``: uplo, trans,
n, k, α, A, lda, β, C, ldc, every argument by reference, 32-bit integers). They are found with
ctypes at first use and checked once against a small dense product; where they are missing (other
platforms, builds without MKL) or the check fails, :func:`available` is False and the caller
(``factors.gram``) keeps its blocked product. ctypes releases the GIL for the call, so the
pipelined statistics' thread (``curvature/pipeline.py``) still overlaps it with the trainer.

The product is written into the lower triangle of a row-major (K, K) tensor (the upper triangle of
its column-major view) and mirrored in place (:func:`mirror_lower`), one row panel at a time with
MKL's out-of-place transpose ``MKL_Somatcopy``/``MKL_Domatcopy`` (C interface, exported beside
syrk). A plain strided copy reads the K² matrix transposed, one page per element once K is in the
thousands: for the Nature-CNN fc factor (K = 3137) that took 89 ms on one thread against syrk's
48 ms, and the panel transpose takes 10 ms. :func:`worthwhile` leaves narrow products (K < 256) to
the GEMM, which is as fast there.

MKL's syrk is fast on Intel CPUs only. On an AMD EPYC (Zen 3, AVX2) the same wheel's syrk took
1.3–1.8× the time of ``factors.gram``'s blocked product built from GEMMs (conv1's 256000 × 257:
2.51× against 1.71× half the GEMM's time; the Nature fc's 640 × 3137: 1.44× against 0.80×), so
:func:`preferred` keeps it to ``GenuineIntel`` processors (``/proc/cpuinfo``), where it was the
faster one (conv1 83 ms against the blocked 116 ms). The rule is fixed per machine, not timed at
run time, so a run on one CPU always takes the same kernel (and the same bits);
``KFAC_BENCH_SYRK=mkl`` or ``=blocked`` forces one, to measure both on one machine.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from kfac_bench.provenance import cpuinfo_field

_ROUTINES = {
    torch.float32: ("mkl_blas_ssyrk", ctypes.c_float),
    torch.float64: ("mkl_blas_dsyrk", ctypes.c_double),
}
_TRANSPOSES = {
    torch.float32: ("MKL_Somatcopy", ctypes.c_float),
    torch.float64: ("MKL_Domatcopy", ctypes.c_double),
}
_INT_MAX = 2**31 - 1
#: syrk only for products at least this wide. Narrower ones are cheap and the GEMM is as fast or
#: faster on one thread: (20480, 37) MinAtar-conv rows take 0.64 ms by GEMM, 1.2 ms by syrk;
#: (51840, 64) 3.4 and 4.0 ms (two threads: 0.93 and 0.65, 2.4 and 2.2 ms)
MIN_COLUMNS = 256
#: rows per panel of :func:`mirror_lower` (10.1 ms for K = 3137, 1.15 ms for K = 1025, one thread)
MIRROR_PANEL = 128


@functools.cache
def _library() -> ctypes.CDLL | None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


def _symbol(name: str):
    """``name`` from libtorch_cpu with no return value, or None where it is not exported."""
    library = _library()
    function = getattr(library, name, None) if library is not None else None
    if function is not None:
        function.restype = None
    return function


@functools.cache
def _routine(dtype: torch.dtype):
    name, scalar = _ROUTINES[dtype]
    function = _symbol(name)
    return None if function is None else (function, scalar)


@functools.cache
def _transpose_routine(dtype: torch.dtype):
    """MKL's ``?omatcopy`` (C interface: ordering, trans, rows, cols, α, A, lda, B, ldb, by value)."""
    name, scalar = _TRANSPOSES[dtype]
    function = _symbol(name)
    if function is not None:
        size = ctypes.c_size_t
        function.argtypes = [ctypes.c_char, ctypes.c_char, size, size, scalar, ctypes.c_void_p]
        function.argtypes += [size, ctypes.c_void_p, size]
    return function


def _call(rows: torch.Tensor, scale: float, out: torch.Tensor) -> bool:
    """Write scale · rowsᵀ rows into the lower triangle of ``out`` (row-major); False when the
    layout or sizes are not ones BLAS can read in place."""
    found = _routine(rows.dtype)
    if found is None:
        return False
    function, scalar = found
    n_rows, k = rows.shape
    row_stride, col_stride = rows.stride()
    # column-major view of rows' memory: C = A Aᵀ with A (K, N) when rows are row-major,
    # C = Aᵀ A with A (N, K) when they are column-major (a transposed buffer)
    if col_stride == 1 and row_stride >= max(1, k):
        trans, lda = b"N", row_stride
    elif row_stride == 1 and col_stride >= max(1, n_rows):
        trans, lda = b"T", col_stride
    else:
        return False
    if max(n_rows, k, lda) > _INT_MAX:
        return False
    c_int = ctypes.c_int
    function(
        ctypes.c_char_p(b"U"),
        ctypes.c_char_p(trans),
        ctypes.byref(c_int(k)),
        ctypes.byref(c_int(n_rows)),
        ctypes.byref(scalar(scale)),
        ctypes.c_void_p(rows.data_ptr()),
        ctypes.byref(c_int(lda)),
        ctypes.byref(scalar(0.0)),
        ctypes.c_void_p(out.data_ptr()),
        ctypes.byref(c_int(k)),
    )
    return True


@functools.cache
def _upper_mask(k: int) -> torch.Tensor:
    return torch.ones(k, k, dtype=torch.bool).triu(1)


def mirror_lower(square: torch.Tensor, panel: int = MIRROR_PANEL) -> torch.Tensor:
    """Copy the lower triangle of a contiguous (K, K) CPU tensor onto its upper one, in place.

    Row panel [i, j): the rest of its columns, square[i:j, j:], from square[j:, i:j]ᵀ, the panel
    below the diagonal, by ``?omatcopy`` (a strided copy where that is missing). The diagonal
    blocks, each from its own transpose, are one ``where`` over a (K // panel, panel, panel)
    view of all of them (one per panel cost ~25 µs each, a third of the mirror for K = 1025),
    plus the last, partial block. Returns ``square``.
    """
    if square.dim() != 2 or square.shape[0] != square.shape[1] or not square.is_contiguous():
        raise ValueError(
            f"mirror_lower needs a contiguous square matrix, got {tuple(square.shape)}"
        )
    k = square.shape[0]
    full = k // panel
    if full:
        blocks = square.as_strided((full, panel, panel), ((k + 1) * panel, k, 1))
        blocks.copy_(torch.where(_upper_mask(panel), blocks.transpose(1, 2), blocks))
    if k > full * panel:
        last = square[full * panel :, full * panel :]
        last.copy_(torch.where(_upper_mask(k - full * panel), last.T, last))
    transpose = _transpose_routine(square.dtype) if square.dtype in _TRANSPOSES else None
    item, base = square.element_size(), square.data_ptr()
    for lo in range(0, k - panel, panel):
        hi = lo + panel
        if transpose is None:
            square[lo:hi, hi:].copy_(square[hi:, lo:hi].T)
            continue
        below, right = base + (hi * k + lo) * item, base + (lo * k + hi) * item
        transpose(b"R", b"T", k - hi, hi - lo, 1.0, below, k, right, k)
    return square


@functools.cache
def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether BLAS syrk is there for ``dtype`` and, mirrored, agrees with a dense product (checked
    once, on both layouts)."""
    if dtype not in _ROUTINES or _routine(dtype) is None:
        return False
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    want = 0.5 * rows.T @ rows
    for layout in (rows.to(dtype), rows.T.contiguous().to(dtype).T):
        got = torch.empty(11, 11, dtype=dtype)
        if not _call(layout, 0.5, got):
            return False
        mirror_lower(got, panel=4)
        if not torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5):
            return False
    return True


def cpu_vendor() -> str:
    """The ``vendor_id`` of ``/proc/cpuinfo`` (``GenuineIntel``, ``AuthenticAMD``, ...), or ''
    where there is none (not Linux, not x86)."""
    return cpuinfo_field("vendor_id")


#: environment variable that overrides :func:`preferred`: ``mkl``, ``blocked`` or ``auto``
KERNEL_ENV = "KFAC_BENCH_SYRK"
KERNEL_CHOICES = ("auto", "mkl", "blocked")


def kernel_choice() -> str:
    """``KFAC_BENCH_SYRK`` (``auto`` when unset or empty); ValueError naming the choices for any
    other value."""
    choice = os.environ.get(KERNEL_ENV, "auto") or "auto"
    if choice not in KERNEL_CHOICES:
        raise ValueError(
            f"{KERNEL_ENV}={choice!r} is not a kernel; choose one of {', '.join(KERNEL_CHOICES)}"
        )
    return choice


@functools.cache
def preferred() -> bool:
    """Whether the statistics take MKL's syrk: on Intel CPUs only (module docstring), unless
    ``KFAC_BENCH_SYRK`` says ``mkl`` or ``blocked`` (to compare the two on one machine)."""
    choice = kernel_choice()
    if choice != "auto":
        return choice == "mkl"
    return cpu_vendor() == "GenuineIntel"


def worthwhile(rows: torch.Tensor) -> bool:
    """syrk for these (N, K) rows: CPU, float32/64, K ≥ :data:`MIN_COLUMNS`, an Intel CPU
    (:func:`preferred`) and BLAS present."""
    return (
        rows.device.type == "cpu"
        and rows.dtype in _ROUTINES
        and rows.shape[1] >= MIN_COLUMNS
        and preferred()
        and available(rows.dtype)
    )


def symmetric_product(rows: torch.Tensor, scale: float) -> torch.Tensor | None:
    """scale · rowsᵀ rows (K, K) through BLAS syrk and a mirror, or None when the layout of
    ``rows`` is not one BLAS reads in place (then the caller computes it another way)."""
    k = rows.shape[1]
    lower = rows.new_empty(k, k)
    if not _call(rows, scale, lower):
        return None
    return mirror_lower(lower)
