"""Damping and inversion of one layer's Kronecker factors (DESIGN.md §3, ``kfac.damping_mode``).

Gradient layout (PyTorch): M = ∇W as (C_out, K[+1]), bias column last when folded into A.

- ``eigen`` (baselines, ikostrikov, KFAC-PyTorch, ACKTR-PyTorch): A = Q_A d_A Q_Aᵀ, G = Q_G d_G Q_Gᵀ,
  eigenvalues ≤ τ zeroed per factor, then  Δ = Q_G [(Q_Gᵀ M Q_A) ⊘ (d_G d_Aᵀ + λ)] Q_Aᵀ,
  which is (A⊗G + λI)⁻¹ vec(M) when nothing is clipped; with many clipped, the same Δ through
  the kept eigenvectors only (:mod:`kfac_bench.curvature.kept_basis`).
  (openai/baselines ``baselines/acktr/kfac.py`` lines 678-736; kfac_utils.py ``detectMinVal``)
- ``tikhonov`` (seed notebook, gpauloski INVERSE): Δ = (G + γI)⁻¹ M (A + γI)⁻¹, γ per factor
  (default √λ), inverses through Cholesky.
- ``tikhonov-pi`` (Martens & Grosse 2015 §6.3): π = sqrt((tr A/dim A)/(tr G/dim G)),
  Δ = (G + (√λ/π) I)⁻¹ M (A + π√λ I)⁻¹.
- ``ekfac`` (George et al. 2018; alecwangcq/KFAC-Pytorch ``optimizers/ekfac.py``
  ``_get_natural_grad``): the eigenbases of ``eigen`` with the scaling s (C, K') in place of
  d_G d_Aᵀ, Δ = Q_G [(Q_Gᵀ M Q_A) ⊘ (s + λ)] Q_Aᵀ. A new decomposition starts s at d_G d_Aᵀ
  (:func:`kfac_bench.curvature.ekfac.reset_scale`); the optimizer then folds the Fisher pass's
  per-example statistic into it (``ekfac.fold_scale``). No per-factor clipping τ.

A separate bias block (``bias_G``, with A_b = 1) is treated as a Kronecker product with the 1×1
factor [1], so every mode applies to it unchanged (ekfac: Q_A = [1], s_b of shape (C, 1)).

Speed knobs (issue 6, off by default): :class:`InverseJob` runs the decompositions of a snapshot
on a background thread (``kfac.async_inverse``), and :func:`torch_threads` bounds the threads
they use (``kfac.inverse_threads``).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from kfac_bench.config import KfacConfig
from kfac_bench.curvature.ekfac import reset_scale
from kfac_bench.curvature.kept_basis import KeptBasis


class FactorInverseError(RuntimeError):
    """A decomposition failed (non-finite factor, not positive definite after damping)."""


@dataclass
class FactorPairInverse:
    """What ``apply`` needs for one (A, G) pair, plus diagnostics from the decomposition.

    eigen: ``a``/``g`` hold eigenvectors, ``a_vals``/``g_vals`` clipped eigenvalues.
    ekfac: as eigen (eigenvalues unclipped) plus ``scale``, the running s (C, K'), updated in place.
    tikhonov*: ``a``/``g`` hold the damped inverses (``a_vals``/``g_vals`` unused).
    """

    mode: str
    a: torch.Tensor
    g: torch.Tensor
    a_vals: torch.Tensor | None
    g_vals: torch.Tensor | None
    damping: float
    diagnostics: torch.Tensor  # (6,) A_trace, G_trace, A_cond, G_cond, A_clipped, G_clipped
    scale: torch.Tensor | None = None  # ekfac's s (C, K')
    # eigen: how ``apply`` preconditions, built at its first call after a decomposition and
    # reused until the next: through the kept eigenvectors (:mod:`kept_basis`, where enough
    # eigenvalues were clipped) or with 1 / (d_G d_Aᵀ + λ), (C, K'), cached (one multiply per
    # step instead of an outer product, a sum and a divide)
    _kept: KeptBasis | None = field(default=None, init=False, repr=False, compare=False)
    _reciprocal: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def apply(self, m: torch.Tensor) -> torch.Tensor:
        """Precondition M (C_out, K) -> Δ (C_out, K) in the factors' dtype."""
        if self.mode == "eigen":
            if self._kept is None and self._reciprocal is None:
                self._kept = KeptBasis.of(self.g, self.g_vals, self.a, self.a_vals, self.damping)
                if self._kept is None:
                    outer = self.g_vals[:, None] * self.a_vals[None, :]
                    self._reciprocal = outer.add_(self.damping).reciprocal_()
            if self._kept is not None:
                return self._kept.apply(m)
            v = (self.g.T @ m @ self.a).mul_(self._reciprocal)
            return self.g @ v @ self.a.T
        if self.mode == "ekfac":
            v = (self.g.T @ m @ self.a) / (self.scale + self.damping)
            return self.g @ v @ self.a.T
        return self.g @ m @ self.a

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "a": self.a,
            "g": self.g,
            "a_vals": self.a_vals,
            "g_vals": self.g_vals,
            "damping": self.damping,
            "diagnostics": self.diagnostics,
            "scale": self.scale,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> FactorPairInverse:
        return cls(**state)


def _eigh(matrix: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors (columns) of a symmetric factor, its zero rows left out.

    A unit whose input (or output gradient) is exactly 0 in every example so far (a dead ReLU of
    the fc input, say) gives a row and column of zeros: the factor is block diagonal, with the
    standard basis vector of that unit an eigenvector for eigenvalue 0. Those come first, then
    the eigenpairs of the principal submatrix of the other rows (:func:`_eigh_dense`): the same
    spectrum and, for the eigen and ekfac steps, the same Δ as one dense ``eigh``, at (n'/n)³ of
    its cost. Measured on real runs: the Nature fc's 3137² A had 209 zero rows at update 22 and
    107 at 160k steps of Breakout (``atari-tuned``), MinAtar's 1025² fc A 119 at 300k steps of
    MinAtar Breakout (``minatar-tuned``); eigh of 2928² vs 3137²: 2.1 vs 2.9 s on two threads.
    """
    live = (matrix != 0).any(dim=0)
    n, n_live = matrix.shape[0], int(live.sum())
    if n_live == n:
        return _eigh_dense(matrix, what)
    vals = matrix.new_zeros(n)
    vecs = matrix.new_zeros(n, n)
    dead = torch.nonzero(~live).flatten()
    vecs[dead, torch.arange(n - n_live, device=matrix.device)] = 1.0
    if n_live > 0:
        rows = torch.nonzero(live).flatten()
        live_vals, live_vecs = _eigh_dense(matrix[rows][:, rows], what)
        vals[n - n_live :] = live_vals
        vecs[rows, n - n_live :] = live_vecs
    return vals, vecs


def _eigh_dense(matrix: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``; a float32 failure to converge is retried once in float64.

    Rank-deficient factors (e.g. a 3137² fc factor estimated from a few hundred rows) have many
    repeated zero eigenvalues, on which float32 LAPACK ``syevd`` can fail to converge (the
    "eigendecomposition hangs/fails" reports against ikostrikov's ACKTR, issue #302). The retry
    is the same decomposition at higher precision; it is announced with a warning, never silent.
    """
    try:
        return torch.linalg.eigh(matrix)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        if matrix.dtype == torch.float32:
            warnings.warn(
                f"float32 eigendecomposition of {what} failed to converge; retried in float64",
                RuntimeWarning,
                stacklevel=2,
            )
            try:
                vals, vecs = torch.linalg.eigh(matrix.double())
                return vals.float(), vecs.float()
            except RuntimeError as error64:
                error = error64
        raise FactorInverseError(f"eigendecomposition of {what} failed: {error}") from error


def _damped_inverse(matrix: torch.Tensor, shift: float, what: str) -> torch.Tensor:
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    chol, info = torch.linalg.cholesky_ex(matrix + shift * eye)
    if int(info) != 0:
        raise FactorInverseError(
            f"{what} + {shift:g}·I is not positive definite (Cholesky failed at minor {int(info)})"
        )
    return torch.cholesky_inverse(chol)


def _condition(eigenvalues: torch.Tensor, floor: float) -> torch.Tensor:
    """max / min over the eigenvalues kept (> floor); nan when none is kept."""
    kept = eigenvalues > floor
    top = torch.where(kept, eigenvalues, torch.zeros_like(eigenvalues)).max()
    bottom = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("inf"))).min()
    return torch.where(kept.any(), top / bottom, torch.full_like(top, float("nan")))


def invert_pair(
    a: torch.Tensor, g: torch.Tensor, config: KfacConfig, what: str
) -> FactorPairInverse:
    """Decompose one Kronecker pair (A: K², G: C²) under ``config.damping_mode``."""
    lam = config.damping
    traces = torch.stack([torch.trace(a), torch.trace(g)])
    if config.damping_mode == "ekfac":
        a_vals, a_vecs = _eigh(a, f"A of {what}")
        g_vals, g_vecs = _eigh(g, f"G of {what}")
        conds = torch.stack([_condition(a_vals, 0.0), _condition(g_vals, 0.0)])
        diagnostics = torch.cat([traces, conds, torch.zeros(2, dtype=a.dtype, device=a.device)])
        scale = reset_scale(a_vals, g_vals)
        return FactorPairInverse("ekfac", a_vecs, g_vecs, a_vals, g_vals, lam, diagnostics, scale)
    if config.damping_mode == "eigen":
        a_vals, a_vecs = _eigh(a, f"A of {what}")
        g_vals, g_vecs = _eigh(g, f"G of {what}")
        a_keep = a_vals > config.eigen_clip
        g_keep = g_vals > config.eigen_clip
        diagnostics = torch.cat(
            [
                traces,
                torch.stack(
                    [_condition(a_vals, config.eigen_clip), _condition(g_vals, config.eigen_clip)]
                ),
                torch.stack([(~a_keep).sum(), (~g_keep).sum()]).to(a.dtype),
            ]
        )
        return FactorPairInverse(
            "eigen", a_vecs, g_vecs, a_vals * a_keep, g_vals * g_keep, lam, diagnostics
        )
    if config.damping_mode == "tikhonov":
        gamma = config.factor_damping if config.factor_damping is not None else math.sqrt(lam)
        a_shift = g_shift = gamma
    else:  # tikhonov-pi
        a_mean = traces[0] / a.shape[0]
        g_mean = traces[1] / g.shape[0]
        tiny = torch.finfo(a.dtype).tiny
        pi = float(torch.sqrt(a_mean.clamp_min(tiny) / g_mean.clamp_min(tiny)))
        a_shift, g_shift = pi * math.sqrt(lam), math.sqrt(lam) / pi
    nan = torch.full((2,), float("nan"), dtype=a.dtype, device=a.device)
    zeros = torch.zeros(2, dtype=a.dtype, device=a.device)
    return FactorPairInverse(
        config.damping_mode,
        _damped_inverse(a, a_shift, f"A of {what}"),
        _damped_inverse(g, g_shift, f"G of {what}"),
        None,
        None,
        lam,
        torch.cat([traces, nan, zeros]),
    )


# ---------------------------------------------------------------------------------------------
# Decompositions off the critical path (issue 6 speed knobs; off by default)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` (``count`` ≤ 0: leave it), then restore.

    With OpenMP builds the setting is per calling thread (plus the default new threads inherit),
    so a background decomposition can use one core while the training thread keeps its own.
    """
    if count <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


LayerDecomposition = tuple[FactorPairInverse, "FactorPairInverse | None"]


def decompose_layer(
    a: torch.Tensor, g: torch.Tensor, bias_g: torch.Tensor | None, config: KfacConfig, what: str
) -> LayerDecomposition:
    """The weight pair (A, G) and, when the variant gives one, the bias block ([1], bias_G)."""
    weights = invert_pair(a, g, config, what)
    bias = None
    if bias_g is not None:
        one = torch.ones(1, 1, dtype=bias_g.dtype, device=bias_g.device)
        bias = invert_pair(one, bias_g, config, f"{what}.bias")
    return weights, bias


class InverseJob:
    """Decompose a snapshot of every layer's factors on a daemon thread.

    ``snapshot`` maps layer name -> (A, G, bias_G) *copies* (the running averages keep being
    updated in place by the training thread). ``result`` maps layer name -> (weights, bias).
    :meth:`wait` never blocks longer than ``timeout_s``: a decomposition that has not finished by
    then raises :class:`FactorInverseError` (the daemon thread cannot hold the process at exit).

    This is the asynchronous eigendecomposition of openai/baselines ``baselines/acktr/kfac.py``
    (lines 819-866: a QueueRunner thread fills a capacity-1 queue that the train step drains when
    it can). There, *when* a result is applied depends on thread timing; here the optimizer
    applies it at a fixed update (``async_staleness`` after the snapshot), waiting for it if
    needed, so a run is reproducible and its staleness exact.
    """

    def __init__(
        self,
        snapshot: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        config: KfacConfig,
        *,
        snapshot_step: int,
        install_step: int,
    ) -> None:
        self.config = config
        self.snapshot_step = snapshot_step
        self.install_step = install_step
        self.result: dict[str, LayerDecomposition] | None = None
        self.error: BaseException | None = None
        self.seconds = math.nan
        self._done = threading.Event()
        self._snapshot = snapshot
        self._thread = threading.Thread(target=self._run, name="kfac-inverse", daemon=True)
        self._thread.start()

    @classmethod
    def finished(
        cls, result: dict[str, LayerDecomposition], *, snapshot_step: int, install_step: int
    ) -> InverseJob:
        """A job whose result is already known (restored from a checkpoint)."""
        job = cls.__new__(cls)
        job.config = None
        job.snapshot_step, job.install_step = snapshot_step, install_step
        job.result, job.error, job.seconds = result, None, 0.0
        job._done = threading.Event()
        job._done.set()
        job._snapshot = {}
        job._thread = None
        return job

    def state_dict(self, timeout_s: float) -> dict:
        """The finished result (waiting at most ``timeout_s``) with its steps, for a checkpoint."""
        result = self.wait(timeout_s)
        return {
            "snapshot_step": self.snapshot_step,
            "install_step": self.install_step,
            "layers": {
                name: [w.state_dict(), None if b is None else b.state_dict()]
                for name, (w, b) in result.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> InverseJob:
        """A finished job from :meth:`state_dict`."""
        result = {
            name: (
                FactorPairInverse.from_state_dict(w),
                None if b is None else FactorPairInverse.from_state_dict(b),
            )
            for name, (w, b) in state["layers"].items()
        }
        return cls.finished(
            result,
            snapshot_step=int(state["snapshot_step"]),
            install_step=int(state["install_step"]),
        )

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            with torch.no_grad(), torch_threads(self.config.inverse_threads):
                self.result = {
                    name: decompose_layer(a, g, bias_g, self.config, name)
                    for name, (a, g, bias_g) in self._snapshot.items()
                }
        except BaseException as error:  # re-raised on the training thread by wait()
            self.error = error
        finally:
            self._snapshot = {}
            self.seconds = time.perf_counter() - start
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float) -> dict[str, LayerDecomposition]:
        """The result; raises FactorInverseError on failure or after ``timeout_s`` seconds."""
        if not self._done.wait(timeout_s):
            raise FactorInverseError(
                f"asynchronous inverse (snapshot of update {self.snapshot_step}) did not finish "
                f"within {timeout_s:g} s (kfac.async_timeout_s)"
            )
        if self.error is not None:
            if isinstance(self.error, FactorInverseError):
                raise self.error
            raise FactorInverseError(
                f"asynchronous inverse failed: {type(self.error).__name__}: {self.error}"
            ) from self.error
        return self.result
