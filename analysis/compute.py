"""Every statistic the report shows, computed from a loaded sweep (no files written).

:func:`compute` returns an :class:`Analysis`: per-run metrics, per-env results, normalised
score matrices ``{group: array(runs × envs)}``, aggregate IQM/mean/median, performance
profiles, pairwise probabilities of improvement, across-seed curves, logged diagnostics and
the KL ratio of the applied step, the multiplicity-corrected support table
(:mod:`analysis.significance`) and the Fisher-fidelity summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import aggregate, curves, significance, tables
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
    scores: dict[str, np.ndarray]  # normalised final scores over norm_envs
    envs: list[str]  # envs with at least one ok run
    norm_envs: list[str]  # envs whose normalisation is usable (the aggregate's columns)
    aggregates: pd.DataFrame
    poi: pd.DataFrame
    profiles: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]
    taus: np.ndarray
    curves_step: pd.DataFrame
    curves_wall: pd.DataFrame
    equal_time: pd.DataFrame  # every group at the same wall-clock second (curves.equal_time_table)
    diagnostics: pd.DataFrame
    kl_ratio: pd.DataFrame
    old_schema_runs: list[str]
    support: pd.DataFrame
    fidelity: pd.DataFrame | None
    facets: dict[str, str] = field(default_factory=dict)  # group -> facet
    labels: dict[str, str] = field(default_factory=dict)  # group -> label


#: Extra keys of fidelity.csv (kfac_bench/fidelity/rows.py) kept apart in the summary.
FIDELITY_KEYS = ("reference", "factors", "fisher_type")


def fidelity_summary(fidelity: pd.DataFrame | None) -> pd.DataFrame | None:
    """Mean cosine similarity by ``variant × damping_mode`` (and ``layer``, ``reference``,
    ``factors`` when present: rows against the true and the sampled Fisher, and single-batch vs
    running factors, are never averaged together).

    Lenient: ``None`` unless the columns ``variant``, ``damping_mode`` and ``cosine`` exist.
    Columns: ``variant, damping_mode, [layer,] [reference, factors,] cosine_mean, cosine_std, n``.
    """
    if fidelity is None or not {"variant", "damping_mode", "cosine"} <= set(fidelity.columns):
        return None
    frame = fidelity.copy()
    frame["cosine"] = pd.to_numeric(frame["cosine"], errors="coerce")
    keys = ["variant", "damping_mode"] + (["layer"] if "layer" in frame.columns else [])
    keys += [key for key in FIDELITY_KEYS if key in frame.columns]
    for key in keys:
        frame[key] = frame[key].fillna("").astype(str)
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
    raw, envs = tables.score_matrices(per_run, "final_score")
    usable = set(bounds.loc[bounds["usable"].astype(bool), "env"])
    norm_envs = [env for env in envs if env in usable]
    scores, _ = tables.score_matrices(per_run, "normalised", norm_envs)
    scores = {g: s for g, s in scores.items() if np.isfinite(s).any()}
    agg = tables.aggregate_table(scores, reps, seed, CONFIDENCE)
    agg["facet"] = agg["group"].map(facets)
    agg["label"] = agg["group"].map(labels)

    groups = list(scores)
    poi_parts = []
    pairs = significance.comparison_pairs(groups, keys)
    if pairs and len(norm_envs) > 1:
        part = aggregate.pairwise_poi(scores, pairs, reps, CONFIDENCE, seed)
        part.insert(0, "scope", "aggregate")
        poi_parts.append(part)
    for m, env in enumerate(envs):
        # P(improvement) is invariant under the increasing min–max map: raw scores suffice
        env_scores = {
            g: s[np.isfinite(s[:, m]), m][:, None]
            for g, s in raw.items()
            if np.isfinite(s[:, m]).any()
        }
        env_pairs = significance.comparison_pairs(list(env_scores), keys)
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

    curves_step = curves.aggregate_curves(
        curves.run_curves(sweep, per_run, "step", options), per_run, metric, reps, seed
    )
    curves_wall = curves.aggregate_curves(
        curves.run_curves(sweep, per_run, "wall_time", options), per_run, metric, reps, seed
    )
    support = significance.support_table(per_run, results, agg, poi, scores, metric)
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
        norm_envs=norm_envs,
        aggregates=agg,
        poi=poi,
        profiles=profiles,
        taus=taus,
        curves_step=curves_step,
        curves_wall=curves_wall,
        equal_time=curves.equal_time_table(curves_wall, per_run),
        diagnostics=curves.diagnostic_curves(sweep, per_run),
        kl_ratio=curves.kl_ratio_table(sweep.updates, per_run),
        old_schema_runs=[
            r
            for r in curves.old_schema_runs(sweep.updates)
            if r in set(per_run["run"][per_run["ok"]])
        ],
        support=support,
        fidelity=fidelity_summary(sweep.fidelity),
        facets=facets,
        labels=labels,
    )
