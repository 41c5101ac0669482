"""Which pairwise differences survive: a per-pair test, then a correction over all pairs.

The report compares pairs of groups that differ in exactly one key (:func:`comparison_pairs`),
on every env (raw final scores) and, with several envs, in aggregate (normalised final scores).
All these pairs form **one family**. For each pair:

1. **Test**: a two-sided Welch t-test of the difference in means (Welch 1947; the test Colas,
   Sigaud & Oudeyer 2018, "How Many Random Seeds?", recommend for comparing RL algorithms).
   In aggregate it is stratified by env: ``D = (1/M) Σ_m (x̄_m − ȳ_m)``, the mean-over-envs
   difference, with ``Var D = (1/M²) Σ_m (s²_xm/n_xm + s²_ym/n_ym)`` and Welch–Satterthwaite
   degrees of freedom (:func:`welch_test`). With one env this is exactly Welch's t-test.
2. **Correction**: Holm–Bonferroni over the whole family at family-wise error rate α = 0.05
   (Holm 1979, "A simple sequentially rejective multiple test procedure"; :func:`holm`).
3. **Supported** needs Holm to reject *and* at least :data:`MIN_SEEDS` seeds in each group (in
   every env the test uses): with fewer, the t-test's normality assumption cannot be checked
   and percentile-bootstrap CIs are too narrow (Colas et al. 2018; Agarwal et al. 2021).
   **Indicative**: ``p < α`` before correction, but not supported (too few seeds, or not
   significant after correction). **Not significant**: ``p ≥ α``. **Untested**: no env with
   at least 2 finite scores on both sides (counted in the family, never rejected).

The CIs and P(improvement) shown beside each pair are descriptive effect sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

ALPHA = 0.05
MIN_SEEDS = 5
TEST_NAME = "two-sided Welch t-test (stratified by env in aggregate)"
CORRECTION = "Holm–Bonferroni"
STATUSES = ("supported", "indicative", "not significant", "untested")


def holm(p_values: ArrayLike, alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down decisions: ``True`` where the hypothesis is rejected.

    Sort the ``m`` p-values ascending; reject the ``k``-th smallest (``k = 1 … m``) while
    ``p_(k) ≤ α / (m − k + 1)``, and stop at the first that fails (all larger ones are kept).
    NaN p-values count in ``m`` and are never rejected. Controls the family-wise error rate at
    ``α`` under any dependence between the tests (Holm 1979).
    """
    p = np.asarray(p_values, dtype=float).ravel()
    m = p.size
    order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
    reject = [False] * m
    for k, index in enumerate(order):
        if not (p[index] <= alpha / (m - k)):
            break
        reject[int(index)] = True
    return reject


def holm_adjusted(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm-adjusted p-values ``max_{j ≤ k} min(1, (m − j + 1)·p_(j))`` in the input order.

    ``holm_adjusted(p) ≤ α`` gives the same decisions as :func:`holm`; NaN stays NaN.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    m = p.size
    order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(np.where(np.isnan(scaled), np.inf, scaled))
    adjusted[np.isnan(p)] = np.nan
    return adjusted


class WelchResult(NamedTuple):
    """``diff`` = mean-over-strata difference x − y; ``se`` its standard error; ``t``, ``df``,
    two-sided ``p``; ``strata`` used; ``n_x``/``n_y`` the smallest group size over them."""

    diff: float
    se: float
    t: float
    df: float
    p: float
    strata: int
    n_x: int
    n_y: int


def welch_test(x_strata: Sequence[ArrayLike], y_strata: Sequence[ArrayLike]) -> WelchResult:
    """Stratified two-sided Welch t-test of ``mean_m(x̄_m − ȳ_m) = 0``.

    ``x_strata[m]``, ``y_strata[m]``: 1-D score arrays of the two groups in stratum (env) ``m``;
    NaN entries are dropped and strata with fewer than 2 scores on either side are skipped.
    ``df = (Σ v)² / Σ v²/(n − 1)`` over the ``2M`` terms ``v = s²/n`` (Satterthwaite 1946); the
    common ``1/M²`` factor cancels. Zero variance on both sides gives ``p = 1`` for equal means
    and ``p = 0`` otherwise; no usable stratum gives NaN.
    """
    terms: list[tuple[float, int]] = []  # (s²/n, n) per group per stratum
    diffs: list[float] = []
    sizes_x: list[int] = []
    sizes_y: list[int] = []
    for xs, ys in zip(x_strata, y_strata):
        x = np.asarray(xs, dtype=float)
        y = np.asarray(ys, dtype=float)
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        if x.size < 2 or y.size < 2:
            continue
        diffs.append(float(x.mean() - y.mean()))
        terms += [(float(x.var(ddof=1)) / x.size, x.size), (float(y.var(ddof=1)) / y.size, y.size)]
        sizes_x.append(x.size)
        sizes_y.append(y.size)
    if not diffs:
        nan = float("nan")
        return WelchResult(nan, nan, nan, nan, nan, 0, 0, 0)
    m = len(diffs)
    diff = float(np.mean(diffs))
    total = sum(v for v, _ in terms)
    se = float(np.sqrt(total)) / m
    if total == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        t = 0.0 if diff == 0.0 else float(np.sign(diff) * np.inf)
        return WelchResult(diff, 0.0, t, float("nan"), p, m, min(sizes_x), min(sizes_y))
    df = total**2 / sum(v**2 / (n - 1) for v, n in terms)
    t = diff / se
    p = float(2.0 * stats.t.sf(abs(t), df))
    return WelchResult(diff, se, float(t), float(df), p, m, min(sizes_x), min(sizes_y))


def comparison_pairs(
    groups: Sequence[str], keys: dict[str, tuple[str, ...]]
) -> list[tuple[str, str]]:
    """Ordered pairs ``(x, y)`` of groups (``x`` listed first) that differ in exactly one key.

    ``keys[group] = (label, axis value, ...)``: two labels at the same axis values, or one
    label at two values of one axis (the others equal) — the comparisons a sweep is built for.
    """
    return [
        (a, b)
        for i, a in enumerate(groups)
        for b in groups[i + 1 :]
        if sum(u != v for u, v in zip(keys[a], keys[b])) == 1
    ]


def classify(
    p: ArrayLike, n_x: ArrayLike, n_y: ArrayLike, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS
) -> tuple[list[bool], list[str]]:
    """Holm decisions over the whole family and each pair's status (:data:`STATUSES`)."""
    p = np.asarray(p, dtype=float)
    reject = holm(p, alpha)
    status = []
    for pi, rej, nx, ny in zip(p, reject, n_x, n_y):
        if not np.isfinite(pi):
            status.append("untested")
        elif rej and min(nx, ny) >= min_seeds:
            status.append("supported")
        elif pi < alpha:
            status.append("indicative")
        else:
            status.append("not significant")
    return reject, status


def _strata(
    pair: tuple[str, str], scope: str, per_run: pd.DataFrame, scores: dict[str, np.ndarray]
) -> list[list[np.ndarray]]:
    """``[x_strata, y_strata]``: one env's raw final scores of the two groups, or in aggregate
    every env's normalised scores (the columns of the ``{group: runs × envs}`` matrices)."""
    if scope == "aggregate":
        return [list(scores[group].T) for group in pair]
    ok = per_run[per_run["ok"] & (per_run["env"] == scope)]
    return [[ok.loc[ok["group"] == group, "final_score"].to_numpy(dtype=float)] for group in pair]


def support_table(
    per_run: pd.DataFrame,
    results: pd.DataFrame,
    aggregates: pd.DataFrame,
    poi: pd.DataFrame,
    scores: dict[str, np.ndarray],
    metric: str,
    alpha: float = ALPHA,
    min_seeds: int = MIN_SEEDS,
) -> pd.DataFrame:
    """One row per compared pair (the rows of ``poi``) with its test, Holm decision and status.

    Columns: ``scope, x, y`` (``scope``: an env or ``aggregate``), descriptive ``x_value, x_lo,
    x_hi, y_value, y_lo, y_hi`` (per env the final-score mean and CI; in aggregate ``metric`` of
    normalised scores), ``poi, poi_lo, poi_hi``, the test's ``diff, t, df, p_value, n_x, n_y,
    strata``, ``p_holm`` (Holm-adjusted), ``holm_reject``, ``status``, ``supported`` and
    ``better`` (the group with the higher mean, for supported and indicative pairs).
    """
    rows = []
    part_agg = aggregates[aggregates["metric"] == metric].set_index("group")
    for pair in poi.itertuples():
        if pair.scope == "aggregate":
            xv = part_agg.loc[pair.x, ["point", "lo", "hi"]].to_numpy(float)
            yv = part_agg.loc[pair.y, ["point", "lo", "hi"]].to_numpy(float)
        else:
            part = results[results["env"] == pair.scope].set_index("group")
            xv = part.loc[pair.x, ["final_mean", "final_lo", "final_hi"]].to_numpy(float)
            yv = part.loc[pair.y, ["final_mean", "final_lo", "final_hi"]].to_numpy(float)
        test = welch_test(*_strata((pair.x, pair.y), pair.scope, per_run, scores))
        rows.append(
            {
                "scope": pair.scope,
                "x": pair.x,
                "y": pair.y,
                **dict(zip(("x_value", "x_lo", "x_hi"), xv)),
                **dict(zip(("y_value", "y_lo", "y_hi"), yv)),
                "poi": pair.p,
                "poi_lo": pair.lo,
                "poi_hi": pair.hi,
                "diff": test.diff,
                "t": test.t,
                "df": test.df,
                "p_value": test.p,
                "n_x": test.n_x,
                "n_y": test.n_y,
                "strata": test.strata,
            }
        )
    columns = ["scope", "x", "y", "x_value", "x_lo", "x_hi", "y_value", "y_lo", "y_hi", "poi",
               "poi_lo", "poi_hi", "diff", "t", "df", "p_value", "n_x", "n_y", "strata",
               "p_holm", "holm_reject", "status", "supported", "better"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns[:19])
    reject, status = classify(table["p_value"], table["n_x"], table["n_y"], alpha, min_seeds)
    table["p_holm"] = holm_adjusted(table["p_value"]) if len(table) else []
    table["holm_reject"] = reject
    table["status"] = status
    table["supported"] = table["status"] == "supported"
    shown = table["status"].isin(["supported", "indicative"])
    table["better"] = np.where(
        shown, np.where(table["diff"] > 0, table["x"], table["y"]), ""
    ).astype(str)
    return table[columns]
