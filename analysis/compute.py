"""Every statistic the report shows, computed from a loaded sweep (no files written).

:func:`compute` returns an :class:`Analysis`: per-run metrics, per-env results, normalised
score matrices ``{group: array(runs × envs)}``, aggregate IQM/mean/median, performance
profiles, pairwise probabilities of improvement, across-seed curves, K-FAC diagnostics, the
"statistically supported" table and the Fisher-fidelity summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import aggregate, tables
from analysis.load import Sweep
from analysis.tables import MetricOptions

METRICS = ("iqm", "mean", "median")
CONFIDENCE = 0.95


@dataclass(eq=False)
class Analysis:
    """Everything the report shows. Tables are tidy DataFrames (see :mod:`analysis.tables`)."""

    sweep: Sweep
    metric: str
    reps: int
    seed: int
    options: MetricOptions
    per_run: pd.DataFrame
    results: pd.DataFrame
    bounds: pd.DataFrame
    scores: dict[str, np.ndarray]
    envs: list[str]
    aggregates: pd.DataFrame
    poi: pd.DataFrame
    profiles: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]
    taus: np.ndarray
    curves_step: pd.DataFrame
    curves_wall: pd.DataFrame
    diagnostics: pd.DataFrame
    support: pd.DataFrame
    fidelity: pd.DataFrame | None
    facets: dict[str, str] = field(default_factory=dict)  # group -> facet
    labels: dict[str, str] = field(default_factory=dict)  # group -> label


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


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return not (a[1] < b[0] or b[1] < a[0])


def support_table(
    results: pd.DataFrame,
    aggregates: pd.DataFrame,
    poi: pd.DataFrame,
    metric: str,
    multi_env: bool,
) -> pd.DataFrame:
    """Which pairwise differences are statistically supported.

    Per env (final-score mean CIs, P(improvement) on that env) and, with several envs, in
    aggregate (``metric`` of normalised scores, aggregate P(improvement)). A difference is
    *supported* when the two 95% CIs do not overlap or the P(improvement) CI excludes 0.5.
    Columns: ``scope, x, y, x_value, x_lo, x_hi, y_value, y_lo, y_hi, p, p_lo, p_hi,
    ci_overlap, poi_excludes_half, supported, better``.
    """
    rows = []
    for pair in poi.itertuples():
        if pair.scope == "aggregate":
            if not multi_env:
                continue
            part = aggregates[aggregates["metric"] == metric].set_index("group")
            xv = part.loc[pair.x, ["point", "lo", "hi"]].to_numpy(float)
            yv = part.loc[pair.y, ["point", "lo", "hi"]].to_numpy(float)
        else:
            part = results[results["env"] == pair.scope].set_index("group")
            xv = part.loc[pair.x, ["final_mean", "final_lo", "final_hi"]].to_numpy(float)
            yv = part.loc[pair.y, ["final_mean", "final_lo", "final_hi"]].to_numpy(float)
        finite = np.isfinite(xv).all() and np.isfinite(yv).all()
        overlap = _overlap((xv[1], xv[2]), (yv[1], yv[2])) if finite else True
        excludes = bool(pair.lo > 0.5 or pair.hi < 0.5)
        supported = (not overlap) or excludes
        better = ""
        if supported:
            if excludes:
                better = pair.x if pair.p > 0.5 else pair.y
            else:
                better = pair.x if xv[0] > yv[0] else pair.y
        rows.append(
            {
                "scope": pair.scope,
                "x": pair.x,
                "y": pair.y,
                "x_value": xv[0],
                "x_lo": xv[1],
                "x_hi": xv[2],
                "y_value": yv[0],
                "y_lo": yv[1],
                "y_hi": yv[2],
                "p": pair.p,
                "p_lo": pair.lo,
                "p_hi": pair.hi,
                "ci_overlap": overlap,
                "poi_excludes_half": excludes,
                "supported": supported,
                "better": better,
            }
        )
    return pd.DataFrame(rows)


def fidelity_summary(fidelity: pd.DataFrame | None) -> pd.DataFrame | None:
    """Mean cosine similarity by ``variant × damping_mode`` (and ``layer`` when present).

    Lenient: ``None`` unless the columns ``variant``, ``damping_mode`` and ``cosine`` exist.
    Columns: ``variant, damping_mode, [layer,] cosine_mean, cosine_std, n``.
    """
    if fidelity is None or not {"variant", "damping_mode", "cosine"} <= set(fidelity.columns):
        return None
    frame = fidelity.copy()
    frame["cosine"] = pd.to_numeric(frame["cosine"], errors="coerce")
    keys = ["variant", "damping_mode"] + (["layer"] if "layer" in frame.columns else [])
    summary = (
        frame.groupby(keys, sort=True)["cosine"]
        .agg(cosine_mean="mean", cosine_std="std", n="count")
        .reset_index()
    )
    return summary


def compute(
    sweep: Sweep,
    metric: str = "iqm",
    reps: int = 2000,
    seed: int = 0,
    options: MetricOptions | None = None,
) -> Analysis:
    """Run every metric and statistic of the report on a loaded sweep.

    ``metric`` is the across-seed statistic of the curves and the headline aggregate;
    ``reps`` bootstrap resamples with ``seed`` make every CI reproducible; ``options`` the
    metric rules (default :class:`~analysis.tables.MetricOptions`).
    """
    options = options or MetricOptions()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if reps < 1:
        raise ValueError("the number of bootstrap resamples must be >= 1")
    per_run = tables.run_metrics(sweep, options)
    facets = dict(zip(per_run["group"], per_run["facet"]))
    labels = dict(zip(per_run["group"], per_run["label"]))
    keys = {
        row["group"]: (row["label"], *(row[a] for a in sweep.axes))
        for _, row in per_run.drop_duplicates("group").iterrows()
    }
    results = tables.results_table(per_run, sweep.axes, reps, seed, CONFIDENCE)
    if not results.empty:
        results["facet"] = results["group"].map(facets)
    bounds = tables.normalisation_bounds(per_run)
    scores, envs = tables.score_matrices(per_run, "normalised")
    agg = tables.aggregate_table(scores, reps, seed, CONFIDENCE)
    agg["facet"] = agg["group"].map(facets)
    agg["label"] = agg["group"].map(labels)

    groups = list(scores)
    poi_parts = []
    pairs = comparison_pairs(groups, keys)
    if pairs:
        part = aggregate.pairwise_poi(scores, pairs, reps, CONFIDENCE, seed)
        part.insert(0, "scope", "aggregate")
        poi_parts.append(part)
    for m, env in enumerate(envs):
        env_scores = {
            g: s[np.isfinite(s[:, m]), m][:, None]
            for g, s in scores.items()
            if np.isfinite(s[:, m]).any()
        }
        env_pairs = comparison_pairs(list(env_scores), keys)
        if env_pairs:
            part = aggregate.pairwise_poi(env_scores, env_pairs, reps, CONFIDENCE, seed + m + 1)
            part.insert(0, "scope", env)
            poi_parts.append(part)
    poi = (
        pd.concat(poi_parts, ignore_index=True)
        if poi_parts
        else pd.DataFrame(columns=["scope", "x", "y", "p", "lo", "hi", "supported"])
    )
    poi["x_label"] = poi["x"].map(labels)

    taus = aggregate.profile_taus(scores) if scores else np.linspace(0, 1, 101)
    profiles: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for facet in dict.fromkeys(facets[g] for g in groups):
        subset = {g: scores[g] for g in groups if facets[g] == facet}
        profiles[facet] = aggregate.performance_profiles(subset, taus, reps, CONFIDENCE, seed)

    curves_step = tables.aggregate_curves(
        tables.run_curves(sweep, per_run, "step", options), per_run, metric, reps, seed
    )
    curves_wall = tables.aggregate_curves(
        tables.run_curves(sweep, per_run, "wall_time", options), per_run, metric, reps, seed
    )
    diagnostics = tables.diagnostic_curves(sweep, per_run)
    support = support_table(results, agg, poi, metric, multi_env=len(envs) > 1)
    return Analysis(
        sweep=sweep,
        metric=metric,
        reps=reps,
        seed=seed,
        options=options,
        per_run=per_run,
        results=results,
        bounds=bounds,
        scores=scores,
        envs=envs,
        aggregates=agg,
        poi=poi,
        profiles=profiles,
        taus=taus,
        curves_step=curves_step,
        curves_wall=curves_wall,
        diagnostics=diagnostics,
        support=support,
        fidelity=fidelity_summary(sweep.fidelity),
        facets=facets,
        labels=labels,
    )
