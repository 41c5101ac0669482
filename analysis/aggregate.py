"""Aggregate statistics across runs and tasks, with stratified-bootstrap confidence intervals.

Array contract (as in rliable): ``{label: array(runs × tasks)}`` — one row per run (seed), one
column per task (environment). A task with fewer runs than the others is padded with NaN at the
bottom of its column; every function ignores NaN entries. All statistics accept extra leading
batch dimensions ``(..., runs, tasks)`` so bootstrap replicates are computed in one call.

Definitions follow Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice" (NeurIPS):

* **IQM** — the interquartile mean: the 25%-trimmed mean of all runs × tasks scores, trimming
  ``floor(0.25·N)`` values from each end (as ``scipy.stats.trim_mean``);
* **mean / median** — mean / median over tasks of the per-task mean over runs;
* **stratified bootstrap** — resample runs with replacement independently within each task,
  recompute the statistic; the 95% CI is the 2.5–97.5 percentile interval of the replicates;
* **performance profile** — the score distribution ``τ ↦ fraction of runs×tasks scores > τ``;
* **probability of improvement** — ``P(X > Y) = mean over tasks of P(X_m > Y_m)`` with
  ``P(X_m > Y_m) = (1/(N·K)) Σ_i Σ_j S(x_{m,i}, y_{m,j})``, ``S = 1`` if ``x > y``, ``½`` if
  equal, ``0`` otherwise (the Mann–Whitney U statistic divided by ``N·K``); its CI resamples
  X and Y independently, each stratified by task.

Every random draw comes from ``np.random.default_rng`` seeded from ``seed`` and the label name,
so results do not depend on the order or set of other labels.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

Statistic = Callable[[NDArray[np.float64]], NDArray[np.float64]]

#: Bootstrap replicates are computed in chunks of at most this many array elements.
_CHUNK_ELEMENTS = 2_000_000


class Interval(NamedTuple):
    """A point estimate with its confidence interval ``[lo, hi]``."""

    point: float
    lo: float
    hi: float


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a stable hash of ``keys`` (e.g. a label name)."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


# ---------------------------------------------------------------------------------------------
# Point statistics over (..., runs, tasks)


def iqm(x: ArrayLike, axis: int = -1) -> NDArray[np.float64]:
    """Interquartile mean along ``axis``, ignoring NaN.

    For ``k`` finite values sorted ascending, the mean of ranks ``[⌊k/4⌋, k − ⌊k/4⌋)`` (equal to
    ``scipy.stats.trim_mean(x, 0.25)`` when there is no NaN). NaN when ``k = 0``.
    """
    a = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    s = np.sort(a, axis=-1)  # NaN sorts last
    k = np.isfinite(s).sum(axis=-1, keepdims=True)
    cut = (k * 0.25).astype(int)  # floor, as scipy's int(proportiontocut * nobs)
    rank = np.arange(s.shape[-1])
    keep = (rank >= cut) & (rank < k - cut)
    total = np.where(keep, s, 0.0).sum(axis=-1)
    count = keep.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _task_means(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-task mean over runs, ignoring NaN: ``(..., runs, tasks) -> (..., tasks)``."""
    finite = np.isfinite(scores)
    count = finite.sum(axis=-2)
    total = np.where(finite, scores, 0.0).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def aggregate_mean(scores: ArrayLike) -> NDArray[np.float64]:
    """Mean over tasks of per-task mean scores: ``(..., runs, tasks) -> (...)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN → NaN, silently
        return np.nanmean(_task_means(np.asarray(scores, dtype=float)), axis=-1)


def aggregate_median(scores: ArrayLike) -> NDArray[np.float64]:
    """Median over tasks of per-task mean scores: ``(..., runs, tasks) -> (...)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(_task_means(np.asarray(scores, dtype=float)), axis=-1)


def aggregate_iqm(scores: ArrayLike) -> NDArray[np.float64]:
    """IQM of all runs × tasks scores pooled: ``(..., runs, tasks) -> (...)``."""
    a = np.asarray(scores, dtype=float)
    return iqm(a.reshape(*a.shape[:-2], -1), axis=-1)


def optimality_gap(scores: ArrayLike, gamma: float = 1.0) -> NDArray[np.float64]:
    """``γ − mean(min(score, γ))`` over all runs × tasks (Agarwal et al. 2021): ``(...)``."""
    a = np.asarray(scores, dtype=float)
    flat = np.minimum(a.reshape(*a.shape[:-2], -1), gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return gamma - np.nanmean(flat, axis=-1)


AGGREGATES: dict[str, Statistic] = {
    "iqm": aggregate_iqm,
    "mean": aggregate_mean,
    "median": aggregate_median,
}
METRIC_NAMES = {"iqm": "IQM", "mean": "Mean", "median": "Median"}


# ---------------------------------------------------------------------------------------------
# Stratified bootstrap


def _valid_counts(scores: NDArray[np.float64]) -> NDArray[np.int64]:
    """Runs per task (the finite entries of each column must be its top rows)."""
    finite = np.isfinite(scores)
    counts = finite.sum(axis=0)
    rows = np.arange(scores.shape[0])[:, None]
    if not np.array_equal(finite, rows < counts[None, :]):
        raise ValueError("NaN padding must be at the bottom of each task column")
    return counts


def stratified_resample(
    scores: ArrayLike, reps: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``reps`` stratified bootstrap resamples: ``(runs, tasks) -> (reps, runs, tasks)``.

    Within each task ``m`` with ``n_m`` runs, ``n_m`` runs are drawn with replacement (padding
    rows stay NaN), so every replicate keeps the per-task run counts.
    """
    a = np.asarray(scores, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"scores must be (runs × tasks), got shape {a.shape}")
    counts = _valid_counts(a)
    n, m = a.shape
    idx = (rng.random((reps, n, m)) * np.maximum(counts, 1)).astype(np.int64)
    out = a[idx, np.arange(m)]
    out[:, np.arange(n)[:, None] >= counts[None, :]] = np.nan
    return out


def _chunks(reps: int, per_rep: int) -> list[int]:
    size = max(1, _CHUNK_ELEMENTS // max(per_rep, 1))
    return [min(size, reps - start) for start in range(0, reps, size)]


def bootstrap_ci(
    scores: ArrayLike,
    statistic: Statistic,
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    work_per_rep: int | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Point estimate and percentile stratified-bootstrap CI of ``statistic(scores)``.

    ``scores``: ``(runs × tasks)``; ``statistic`` maps ``(..., runs, tasks) -> (..., *out)``.
    Returns ``(point, lo, hi)``, each of shape ``out`` (scalar arrays for scalar statistics).
    ``work_per_rep`` (default ``scores.size``) sizes the replicate chunks to bound memory.
    """
    a = np.asarray(scores, dtype=float)
    rng = rng if rng is not None else np.random.default_rng(0)
    point = np.asarray(statistic(a), dtype=float)
    if not np.isfinite(a).any():
        nan = np.full(point.shape, np.nan)
        return point, nan, nan.copy()
    replicates = [
        np.asarray(statistic(stratified_resample(a, size, rng)), dtype=float)
        for size in _chunks(reps, work_per_rep or a.size)
    ]
    boot = np.concatenate(replicates, axis=0)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return point, lo, hi


def interval_estimates(
    score_dict: Mapping[str, ArrayLike],
    statistic: Statistic,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """``{label: Interval}`` for a scalar statistic of each ``{label: array(runs × tasks)}``."""
    out: dict[str, Interval] = {}
    for label, scores in score_dict.items():
        point, lo, hi = bootstrap_ci(scores, statistic, reps, confidence, rng_for(seed, label))
        out[label] = Interval(float(point), float(lo), float(hi))
    return out


# ---------------------------------------------------------------------------------------------
# Performance profiles


def performance_profile(scores: ArrayLike, taus: ArrayLike) -> NDArray[np.float64]:
    """Score distribution: fraction of runs × tasks scores ``> τ`` for every τ.

    ``(..., runs, tasks)``, ``taus (k,)`` → ``(..., k)``; NaN entries are not counted.
    """
    a = np.asarray(scores, dtype=float)
    flat = a.reshape(*a.shape[:-2], -1)
    valid = np.isfinite(flat).sum(axis=-1)
    t = np.asarray(taus, dtype=float)
    above = (flat[..., None, :] > t[:, None]).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return above / valid[..., None]


def performance_profiles(
    score_dict: Mapping[str, ArrayLike],
    taus: ArrayLike,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]]:
    """``{label: (profile, lo, hi)}``, each ``(len(taus),)``, with stratified-bootstrap CIs."""
    t = np.asarray(taus, dtype=float)
    return {
        label: bootstrap_ci(
            scores,
            lambda s: performance_profile(s, t),
            reps,
            confidence,
            rng_for(seed, "profile", label),
            work_per_rep=np.asarray(scores).size * max(len(t), 1),
        )
        for label, scores in score_dict.items()
    }


def profile_taus(score_dict: Mapping[str, ArrayLike], n: int = 101) -> NDArray[np.float64]:
    """A τ grid spanning ``[min(0, lowest score), max(1, highest score)]``; shape ``(n,)``."""
    values = np.concatenate([np.asarray(s, dtype=float).ravel() for s in score_dict.values()])
    values = values[np.isfinite(values)]
    lo = min(0.0, float(values.min())) if values.size else 0.0
    hi = max(1.0, float(values.max())) if values.size else 1.0
    return np.linspace(lo, hi, n)


# ---------------------------------------------------------------------------------------------
# Probability of improvement


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """``P(X > Y)`` averaged over tasks: ``x (..., N, tasks)``, ``y (..., K, tasks)`` → ``(...)``.

    Per task, ``(1/(N·K)) Σ_i Σ_j [x_i > y_j] + ½ [x_i = y_j]`` over the finite entries (the
    Mann–Whitney U statistic over ``N·K``); the mean over tasks with data on both sides.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    xa = a[..., :, None, :]
    yb = b[..., None, :, :]
    valid = np.isfinite(xa) & np.isfinite(yb)
    wins = np.where(valid, (xa > yb) + 0.5 * (xa == yb), 0.0).sum(axis=(-3, -2))
    pairs = valid.sum(axis=(-3, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_task = np.where(pairs > 0, wins / np.maximum(pairs, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_task, axis=-1)


def poi_interval(
    x: ArrayLike,
    y: ArrayLike,
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> Interval:
    """``P(X > Y)`` with a CI from independent stratified resampling of X and Y."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    rng = rng if rng is not None else np.random.default_rng(0)
    point = float(probability_of_improvement(a, b))
    per_rep = a.shape[0] * b.shape[0] * a.shape[1]
    boot = np.concatenate(
        [
            probability_of_improvement(
                stratified_resample(a, size, rng), stratified_resample(b, size, rng)
            )
            for size in _chunks(reps, per_rep)
        ]
    )
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return Interval(point, float(lo), float(hi))


def pairwise_poi(
    score_dict: Mapping[str, ArrayLike],
    pairs: Sequence[tuple[str, str]] | None = None,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """P(X > Y) with CI for every ordered pair (default: all ``X`` before ``Y`` in the dict).

    Returns columns ``x, y, p, lo, hi, supported`` (``supported``: the CI excludes 0.5).
    """
    labels = list(score_dict)
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
    rows = []
    for a, b in pairs:
        est = poi_interval(
            score_dict[a], score_dict[b], reps, confidence, rng_for(seed, "poi", a, b)
        )
        rows.append(
            {
                "x": a,
                "y": b,
                "p": est.point,
                "lo": est.lo,
                "hi": est.hi,
                "supported": bool(est.lo > 0.5 or est.hi < 0.5),
            }
        )
    return pd.DataFrame(rows, columns=["x", "y", "p", "lo", "hi", "supported"])


# ---------------------------------------------------------------------------------------------
# Learning curves


def curve_interval(
    curves: ArrayLike,
    metric: str = "iqm",
    reps: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    min_coverage: float = 0.5,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Across-run aggregate of curves on a common grid, with a bootstrap CI per grid point.

    ``curves``: ``(runs × points)``, NaN where a run has no value. Whole runs are resampled with
    replacement (one draw shared by all grid points, so a band is a band of curves); at each
    point ``metric`` (``iqm`` | ``mean`` | ``median``) is taken over the finite runs. Points
    where fewer than ``min_coverage`` of the runs have a value are NaN. Returns ``(point, lo,
    hi)``, each ``(points,)``.
    """
    c = np.asarray(curves, dtype=float)
    rng = rng if rng is not None else np.random.default_rng(0)
    stat = AGGREGATES[metric]
    n = c.shape[0]

    def per_point(block: NDArray[np.float64]) -> NDArray[np.float64]:
        # (..., runs, points) -> (..., points, runs, 1): each grid point is one "task"
        return stat(np.swapaxes(block, -1, -2)[..., None])

    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            point = per_point(c)
            boot = np.concatenate(
                [per_point(c[rng.integers(0, n, (size, n))]) for size in _chunks(reps, c.size)]
            )
            alpha = (1.0 - confidence) / 2.0
            lo, hi = np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    thin = np.isfinite(c).sum(axis=0) < max(1, int(np.ceil(min_coverage * n)))
    for arr in (point, lo, hi):
        arr[thin] = np.nan
    return point, lo, hi
