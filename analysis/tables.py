"""From a loaded :class:`~analysis.load.Sweep` to per-run metrics, score matrices and tables.

A **group** is what is compared (:mod:`analysis.groups`): the run's ``label`` plus its value on
every extra sweep axis. Statistics use only ``ok`` runs (state ``done`` with episodes and a
readable config and status); the other runs stay in the per-run table with their ``issue``.
Curves are in :mod:`analysis.curves`, normalisation bounds in :mod:`analysis.normalise`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import aggregate, metrics
from analysis.groups import group_order, with_groups
from analysis.load import Sweep
from analysis.normalise import env_threshold, normalisation_bounds


@dataclass(frozen=True)
class MetricOptions:
    """The documented metric rules (see :mod:`analysis.metrics`)."""

    curve_window: int = 20  # episodes in the learning-curve rolling mean
    threshold_window: int = 100  # episodes in the steps-to-threshold rolling mean
    threshold_min_episodes: int = 10  # episodes needed before the threshold can be reached
    final_fraction: float = 0.1  # final score: the last 10% of the step budget ...
    final_min_episodes: int = 5  # ... if at least this many episodes ended there,
    final_fallback: int = 100  # ... else the last 100 episodes
    grid_points: int = 200  # common grid for learning curves


DEFAULT_OPTIONS = MetricOptions()


# ---------------------------------------------------------------------------------------------
# Per-run metrics


def _budget(row: pd.Series, episodes: pd.DataFrame) -> float:
    for value in (row.get("budget"), row.get("steps")):
        if value is not None and np.isfinite(value) and value > 0:
            return float(value)
    return float(episodes["step"].max()) if len(episodes) else float("nan")


def run_metrics(sweep: Sweep, options: MetricOptions = DEFAULT_OPTIONS) -> pd.DataFrame:
    """One row per run (every run, ok or not) with its metrics.

    Columns: the run table's identity columns, ``group, facet, state, ok, issue, budget, steps,
    wall_time, n_episodes, final_score, final_rule, final_n, auc, threshold,
    threshold_source, steps_to_threshold, reached, steps_per_s, normalised``.
    """
    runs = with_groups(sweep.runs, sweep.axes)
    episodes_by_run = {
        run: frame.sort_values("step", kind="stable")
        for run, frame in sweep.episodes.groupby("run", sort=False)
    }
    empty = pd.DataFrame(columns=["step", "wall_time", "return"])
    thresholds = {env: env_threshold(env, sweep.thresholds) for env in sorted(runs["env"].unique())}
    rows = []
    for _, row in runs.iterrows():
        eps = episodes_by_run.get(row["run"], empty)
        steps = eps["step"].to_numpy(dtype=float)
        returns = eps["return"].to_numpy(dtype=float)
        budget = _budget(row, eps)
        final = metrics.final_score(
            steps,
            returns,
            budget,
            options.final_fraction,
            options.final_min_episodes,
            options.final_fallback,
        )
        grid = np.linspace(0.0, budget, options.grid_points + 1)[1:] if budget > 0 else []
        curve = metrics.interpolate_curve(
            steps, metrics.rolling_mean(returns, options.curve_window), grid, row.get("steps")
        )
        threshold, source = thresholds[row["env"]]
        smoothed = metrics.rolling_mean(
            returns,
            options.threshold_window,
            min(options.threshold_window, options.threshold_min_episodes),
        )
        to_threshold = metrics.steps_to_threshold(steps, smoothed, threshold)
        run_steps = row.get("steps")
        rows.append(
            {
                **{c: row[c] for c in ["run", "label", "env", "seed", *sweep.axes]},
                "group": row["group"],
                "facet": row["facet"],
                "state": row["state"],
                "ok": bool(row["ok"]),
                "issue": row["issue"],
                "budget": budget,
                "steps": run_steps,
                "wall_time": row.get("wall_time"),
                "n_episodes": len(eps),
                "final_score": final.value,
                "final_rule": final.rule,
                "final_n": final.n_episodes,
                "auc": metrics.normalised_auc(grid, curve) if len(grid) else np.nan,
                "threshold": threshold,
                "threshold_source": source,
                "steps_to_threshold": to_threshold,
                "reached": bool(np.isfinite(to_threshold)),
                "steps_per_s": metrics.steps_per_second(
                    float(run_steps) if run_steps is not None else np.nan,
                    float(row.get("wall_time", np.nan)),
                ),
            }
        )
    table = pd.DataFrame(rows)
    bounds = normalisation_bounds(table).set_index("env")
    table["normalised"] = [
        float(metrics.normalise(r.final_score, bounds.at[r.env, "low"], bounds.at[r.env, "high"]))
        if bounds.at[r.env, "usable"]
        else np.nan
        for r in table.itertuples()
    ]
    return table


# ---------------------------------------------------------------------------------------------
# Score matrices and result tables


def score_matrices(
    per_run: pd.DataFrame, value: str = "normalised", envs: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({group: array(runs × envs)}, envs)`` from the ``ok`` runs.

    Row ``i`` of column ``m`` is the ``i``-th seed (sorted) of that group on env ``m``; columns
    with fewer runs are padded with NaN at the bottom (the contract of :mod:`analysis.aggregate`).
    """
    ok = per_run[per_run["ok"] & np.isfinite(per_run[value].astype(float))]
    envs = list(envs) if envs is not None else sorted(ok["env"].unique())
    out: dict[str, np.ndarray] = {}
    for group in group_order(per_run):
        frame = ok[ok["group"] == group]
        if frame.empty:
            continue
        columns = [
            frame.loc[frame["env"] == env].sort_values("seed")[value].to_numpy(dtype=float)
            for env in envs
        ]
        n = max((len(c) for c in columns), default=0)
        matrix = np.full((n, len(envs)), np.nan)
        for m, col in enumerate(columns):
            matrix[: len(col), m] = col
        out[group] = matrix
    return out, envs


def results_table(
    per_run: pd.DataFrame,
    axes: Sequence[str] = (),
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per env × group: final-score mean and IQM with bootstrap CIs, and the other metrics.

    Columns: ``env, group, label, *axes, n, excluded, final_mean, final_lo, final_hi,
    final_iqm, final_iqm_lo, final_iqm_hi, steps_to_threshold, reached, threshold, auc,
    steps_per_s, wall_time`` — ``n`` ok runs used; ``excluded`` runs of the group that were not
    ok; ``steps_to_threshold`` the median over the runs that reached it, ``reached`` how many.
    """
    rows = []
    for env in sorted(per_run["env"].unique()):
        env_runs = per_run[per_run["env"] == env]
        for group in group_order(env_runs):
            frame = env_runs[env_runs["group"] == group]
            ok = frame[frame["ok"]]
            finals = ok["final_score"].to_numpy(dtype=float)[:, None]
            rng = aggregate.rng_for(seed, "results", str(env), group)
            mean = aggregate.bootstrap_ci(finals, aggregate.aggregate_mean, reps, confidence, rng)
            iqm = aggregate.bootstrap_ci(finals, aggregate.aggregate_iqm, reps, confidence, rng)
            reached = ok.loc[ok["reached"], "steps_to_threshold"].to_numpy(dtype=float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                rows.append(
                    {
                        "env": env,
                        "group": group,
                        "label": frame["label"].iloc[0],
                        **{a: frame[a].iloc[0] for a in axes},
                        "n": len(ok),
                        "excluded": int(len(frame) - len(ok)),
                        "final_mean": float(mean[0]),
                        "final_lo": float(mean[1]),
                        "final_hi": float(mean[2]),
                        "final_iqm": float(iqm[0]),
                        "final_iqm_lo": float(iqm[1]),
                        "final_iqm_hi": float(iqm[2]),
                        "steps_to_threshold": float(np.median(reached)) if reached.size else np.nan,
                        "reached": int(reached.size),
                        "threshold": float(frame["threshold"].iloc[0]),
                        "auc": float(np.nanmean(ok["auc"])) if len(ok) else np.nan,
                        "steps_per_s": float(np.nanmean(ok["steps_per_s"])) if len(ok) else np.nan,
                        "wall_time": float(np.nanmean(ok["wall_time"].astype(float)))
                        if len(ok)
                        else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def aggregate_table(
    score_dict: dict[str, np.ndarray], reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """IQM, mean and median of normalised scores per group with stratified-bootstrap CIs.

    Columns: ``group, metric, point, lo, hi, runs`` (``runs``: finite scores used).
    """
    rows = []
    for metric, stat in aggregate.AGGREGATES.items():
        estimates = aggregate.interval_estimates(
            score_dict, stat, reps, confidence, seed=seed + hash_metric(metric)
        )
        for group, est in estimates.items():
            rows.append(
                {
                    "group": group,
                    "metric": metric,
                    "point": est.point,
                    "lo": est.lo,
                    "hi": est.hi,
                    "runs": int(np.isfinite(score_dict[group]).sum()),
                }
            )
    return pd.DataFrame(rows, columns=["group", "metric", "point", "lo", "hi", "runs"])


def hash_metric(metric: str) -> int:
    """A small stable integer per metric name, to decorrelate the metrics' bootstrap streams."""
    return sum(ord(ch) for ch in metric)
