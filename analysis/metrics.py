"""Per-run metrics: small pure functions over one run's episode arrays.

Inputs are 1-D arrays of equal length ``n_episodes``, ordered by ``steps`` (the total env steps,
all envs, at which each episode finished). Definitions (stated again in the report):

* **learning curve** — the trailing rolling mean of episode returns over ``window`` episodes
  (fewer at the start), linearly interpolated onto a common step grid
  (:func:`interpolate_curve`);
* **final score** — mean return of the episodes that finished in the last ``fraction`` (10%) of
  the run's step budget; when fewer than ``min_episodes`` (5) finished there, the mean of the
  last ``fallback_episodes`` (100) episodes (:func:`final_score`);
* **AUC** — the area under the learning curve divided by the grid's step span, i.e. the
  average return over training in return units (:func:`normalised_auc`);
* **steps to threshold** — the first env step at which the trailing mean of the last 100
  episodes (at least 10 finished) reaches the threshold; the Gym "solved" criterion uses 100
  consecutive episodes (:func:`steps_to_threshold`);
* **throughput** — env steps per wall-clock second (:func:`steps_per_second`);
* **normalised score** — ``(s − random) / (best − random)`` (:func:`normalise`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray


class FinalScore(NamedTuple):
    """Final performance of one run: value, which rule produced it, how many episodes."""

    value: float
    rule: str
    n_episodes: int


def rolling_mean(values: ArrayLike, window: int, min_periods: int = 1) -> NDArray[np.float64]:
    """Trailing mean over the last ``window`` values: ``out[i] = mean(values[max(0,i−w+1):i+1])``.

    ``out[i]`` is NaN while fewer than ``min_periods`` values are available. Shape ``(n,)``.
    """
    x = np.asarray(values, dtype=float)
    if window < 1:
        raise ValueError("window must be >= 1")
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    start = np.maximum(idx - window, 0)
    count = idx - start
    out = (csum[idx] - csum[start]) / np.maximum(count, 1)
    out[count < min_periods] = np.nan
    return out


def interpolate_curve(
    x: ArrayLike, y: ArrayLike, grid: ArrayLike, x_end: float | None = None
) -> NDArray[np.float64]:
    """Values of the curve ``(x, y)`` on ``grid``; shape ``grid.shape``.

    Linear interpolation between points; NaN before the first point; the last value is held
    from the last point up to ``x_end`` (the run's last step: the curve is still the state
    "as of" then) and NaN after it. With repeated ``x`` (several episodes ending on the same
    step) the last ``y`` at that ``x`` is used. NaN ``y`` points are ignored.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    grid = np.asarray(grid, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = np.full(grid.shape, np.nan)
    if x.size == 0:
        return out
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    # last occurrence of every distinct x
    last = np.r_[x[1:] != x[:-1], True]
    x, y = x[last], y[last]
    end = x[-1] if x_end is None or not np.isfinite(x_end) else max(float(x_end), x[-1])
    inside = (grid >= x[0]) & (grid <= end)
    out[inside] = np.interp(grid[inside], x, y)
    return out


def final_score(
    steps: ArrayLike,
    returns: ArrayLike,
    budget: float,
    fraction: float = 0.1,
    min_episodes: int = 5,
    fallback_episodes: int = 100,
) -> FinalScore:
    """Mean return over the episodes whose end step is in the last ``fraction`` of ``budget``.

    Rule: episodes with ``step ≥ (1 − fraction)·budget``; if fewer than ``min_episodes`` of
    them, the last ``fallback_episodes`` episodes instead. NaN when there are no episodes.
    """
    s = np.asarray(steps, dtype=float)
    r = np.asarray(returns, dtype=float)
    if r.size == 0:
        return FinalScore(float("nan"), "no episodes", 0)
    if np.isfinite(budget) and budget > 0:
        window = s >= (1.0 - fraction) * budget
        if window.sum() >= min_episodes:
            return FinalScore(
                float(r[window].mean()), f"last {fraction:.0%} of steps", int(window.sum())
            )
    tail = r[np.argsort(s, kind="stable")][-fallback_episodes:]
    return FinalScore(float(tail.mean()), f"last {len(tail)} episodes", len(tail))


def normalised_auc(grid: ArrayLike, curve: ArrayLike) -> float:
    """Trapezoidal area under ``curve`` over ``grid`` divided by ``grid[-1] − grid[0]``.

    Units: return (it is the time-averaged return). Grid points where the curve is NaN (before
    the run's first episode) take the first finite value; NaN if the curve has none.
    """
    x = np.asarray(grid, dtype=float)
    y = np.asarray(curve, dtype=float).copy()
    finite = np.isfinite(y)
    if not finite.any() or x.size < 2 or x[-1] <= x[0]:
        return float("nan")
    first = int(np.argmax(finite))
    y[:first] = y[first]
    last = len(y) - int(np.argmax(finite[::-1])) - 1
    x, y = x[: last + 1], y[: last + 1]
    if np.isnan(y).any():  # interior gaps: interpolate over them
        good = np.isfinite(y)
        y = np.interp(x, x[good], y[good])
    area = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)
    span = x[-1] - x[0]
    return area / span if span > 0 else float(y[0])


def steps_to_threshold(steps: ArrayLike, smoothed: ArrayLike, threshold: float) -> float:
    """First ``steps[i]`` with ``smoothed[i] ≥ threshold``; NaN when never reached.

    ``smoothed`` is the per-episode trailing mean (see :func:`rolling_mean`), NaN where not yet
    defined; ``steps`` must be ascending.
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(smoothed, dtype=float)
    if threshold is None or not np.isfinite(threshold):
        return float("nan")
    hit = np.flatnonzero(np.nan_to_num(v, nan=-np.inf) >= threshold)
    return float(s[hit[0]]) if hit.size else float("nan")


def steps_per_second(steps: float, wall_time: float) -> float:
    """Env steps per wall-clock second; NaN if either is missing or the time is not positive."""
    if not (np.isfinite(steps) and np.isfinite(wall_time)) or wall_time <= 0:
        return float("nan")
    return float(steps) / float(wall_time)


def normalise(scores: ArrayLike, low: float, high: float) -> NDArray[np.float64]:
    """Min–max normalisation ``(scores − low) / (high − low)``; shape of ``scores``.

    ``low`` is the random-policy score and ``high`` the best-known reference (Agarwal et al.
    2021 use the same form for human-normalised Atari scores). NaN if ``high == low``.
    """
    s = np.asarray(scores, dtype=float)
    if not (np.isfinite(low) and np.isfinite(high)) or high == low:
        return np.full(s.shape, np.nan)
    return (s - low) / (high - low)
