"""From a loaded :class:`~analysis.load.Sweep` to per-run metrics, curves and score matrices.

A **group** is what is compared: the run's ``label`` plus its value on every extra sweep axis
(``paper`` or ``paper [damping_mode=eigen]``). Statistics use only ``ok`` runs (state
``done`` with episodes); the other runs stay in the per-run table with their ``issue``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate, metrics
from analysis.load import Sweep
from analysis.references import reference_for

#: Labels in their fixed display order (the five variants, then the first-order control).
KNOWN_LABELS = ("paper", "baselines", "kfac-pytorch", "ikostrikov", "kfac-reduce", "a2c")


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


# ---------------------------------------------------------------------------------------------
# Groups


def _axis_short_names(axes: Sequence[str]) -> dict[str, str]:
    short = {a: a.rsplit(".", 1)[-1] for a in axes}
    if len(set(short.values())) < len(short):
        return {a: a for a in axes}
    return short


def group_name(label: str, axis_values: dict[str, Any]) -> str:
    """``label`` or ``label [axis=value, ...]`` (axis keys shortened to their last part)."""
    if not axis_values:
        return str(label)
    short = _axis_short_names(list(axis_values))
    inner = ", ".join(f"{short[a]}={v}" for a, v in axis_values.items())
    return f"{label} [{inner}]"


def facet_name(axis_values: dict[str, Any]) -> str:
    """``axis=value, ...`` for a facet title; ``"all runs"`` when there are no axes."""
    if not axis_values:
        return "all runs"
    short = _axis_short_names(list(axis_values))
    return ", ".join(f"{short[a]}={v}" for a, v in axis_values.items())


def label_order(labels: Iterable[str]) -> list[str]:
    """Known labels in :data:`KNOWN_LABELS` order, then the others alphabetically."""
    unique = list(dict.fromkeys(labels))
    known = [lab for lab in KNOWN_LABELS if lab in unique]
    return known + sorted(lab for lab in unique if lab not in KNOWN_LABELS)


def with_groups(frame: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Copy of ``frame`` with ``group`` and ``facet`` columns, sorted by label order then axes."""
    out = frame.copy()
    axes = list(axes)
    out["group"] = [
        group_name(row["label"], {a: row[a] for a in axes}) for _, row in out.iterrows()
    ]
    out["facet"] = [facet_name({a: row[a] for a in axes}) for _, row in out.iterrows()]
    order = {lab: i for i, lab in enumerate(label_order(out["label"]))}
    out["_order"] = out["label"].map(order)
    out = out.sort_values(["_order", *axes], kind="stable").drop(columns="_order")
    return out.reset_index(drop=True)


def group_order(frame: pd.DataFrame) -> list[str]:
    """Groups in display order (``frame`` must come from :func:`with_groups`)."""
    return list(dict.fromkeys(frame["group"]))


# ---------------------------------------------------------------------------------------------
# Thresholds and normalisation


def env_threshold(env: str, overrides: dict[str, float]) -> tuple[float, str]:
    """Reward threshold for ``env`` and where it came from.

    ``sweep.json`` ``thresholds`` first, else ``gymnasium.spec(env).reward_threshold``; NaN
    (source ``"none"``) when neither has one.
    """
    if env in overrides:
        return float(overrides[env]), "sweep.json"
    try:
        import gymnasium

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = gymnasium.spec(env).reward_threshold
    except Exception:  # unregistered ids (MinAtar/ALE before registration) or no gymnasium
        value = None
    if value is None:
        return float("nan"), "none"
    return float(value), "gymnasium spec"


def normalisation_bounds(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per-env ``low, high`` for min–max normalisation and their sources.

    From :func:`analysis.references.reference_for`; a bound the table lacks falls back to the
    lowest / highest final score of the ``ok`` runs of that env ("observed in this sweep").
    """
    rows = []
    for env, frame in per_run.groupby("env", sort=True):
        finals = frame.loc[frame["ok"], "final_score"].to_numpy(dtype=float)
        finals = finals[np.isfinite(finals)]
        ref = reference_for(str(env))
        low = ref.random if ref is not None else None
        high = ref.best if ref is not None else None
        low_src = "reference" if low is not None else "observed min in this sweep"
        high_src = "reference" if high is not None else "observed max in this sweep"
        if low is None:
            low = float(finals.min()) if finals.size else float("nan")
        if high is None:
            high = float(finals.max()) if finals.size else float("nan")
        rows.append(
            {
                "env": env,
                "low": low,
                "high": high,
                "low_source": low_src,
                "high_source": high_src,
                "reference": ref.source if ref is not None else "not in analysis/references.py",
            }
        )
    return pd.DataFrame(
        rows, columns=["env", "low", "high", "low_source", "high_source", "reference"]
    )


# ---------------------------------------------------------------------------------------------
# Per-run metrics


def _budget(row: pd.Series, episodes: pd.DataFrame) -> float:
    for value in (row.get("budget"), row.get("steps")):
        if value is not None and np.isfinite(value) and value > 0:
            return float(value)
    return float(episodes["step"].max()) if len(episodes) else float("nan")


def run_metrics(sweep: Sweep, options: MetricOptions = MetricOptions()) -> pd.DataFrame:
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


# ---------------------------------------------------------------------------------------------
# Curves


def run_curves(
    sweep: Sweep,
    per_run: pd.DataFrame,
    x: str = "step",
    options: MetricOptions = MetricOptions(),
) -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
    """Per env: ``(grid, frame)`` with one row per ok run and one column per grid point.

    ``x`` is ``"step"`` (grid up to the env's largest budget) or ``"wall_time"`` (grid up to the
    longest run). Each run's curve is the rolling mean of its episode returns interpolated onto
    the grid, held up to the run's last step / wall time and NaN after it. The frame's index is
    the run name; ``frame.attrs["groups"]`` maps run → group.
    """
    ok = per_run[per_run["ok"]]
    episodes = {run: f for run, f in sweep.episodes.groupby("run", sort=False)}
    out: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
    for env in sorted(ok["env"].unique()):
        env_runs = ok[ok["env"] == env]
        if x == "step":
            end = float(env_runs["budget"].max())
        else:
            end = float(np.nanmax(env_runs["wall_time"].astype(float)))
        if not np.isfinite(end) or end <= 0:
            continue
        grid = np.linspace(0.0, end, options.grid_points + 1)[1:]
        rows = {}
        for r in env_runs.itertuples():
            eps = episodes.get(r.run)
            if eps is None or x not in eps:
                continue
            eps = eps.sort_values(x, kind="stable")
            smoothed = metrics.rolling_mean(eps["return"].to_numpy(float), options.curve_window)
            x_end = r.steps if x == "step" else r.wall_time
            x_end = float(x_end) if x_end is not None and np.isfinite(x_end) else None
            rows[r.run] = metrics.interpolate_curve(eps[x].to_numpy(float), smoothed, grid, x_end)
        if not rows:
            continue
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=grid)
        frame.attrs["groups"] = dict(zip(env_runs["run"], env_runs["group"]))
        out[str(env)] = (grid, frame)
    return out


def aggregate_curves(
    curves: dict[str, tuple[np.ndarray, pd.DataFrame]],
    per_run: pd.DataFrame,
    metric: str = "iqm",
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Long table ``env, group, label, facet, x, point, lo, hi, n`` of across-seed curves.

    ``point`` is ``metric`` over runs at each grid point with a bootstrap CI over runs (see
    :func:`analysis.aggregate.curve_interval`).
    """
    info = per_run.drop_duplicates("group").set_index("group")
    parts = []
    for env, (grid, frame) in curves.items():
        groups = frame.attrs["groups"]
        for group in group_order(per_run):
            runs = [run for run in frame.index if groups.get(run) == group]
            if not runs:
                continue
            matrix = frame.loc[runs].to_numpy(dtype=float)
            point, lo, hi = aggregate.curve_interval(
                matrix, metric, reps, confidence, aggregate.rng_for(seed, "curve", env, group)
            )
            parts.append(
                pd.DataFrame(
                    {
                        "env": env,
                        "group": group,
                        "label": info.at[group, "label"],
                        "facet": info.at[group, "facet"],
                        "x": grid,
                        "point": point,
                        "lo": lo,
                        "hi": hi,
                        "n": len(runs),
                    }
                )
            )
    columns = ["env", "group", "label", "facet", "x", "point", "lo", "hi", "n"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


# ---------------------------------------------------------------------------------------------
# K-FAC diagnostics

DIAGNOSTIC_COLUMNS = ("kl", "predicted_kl", "nu", "lr")


def diagnostic_columns(updates: pd.DataFrame) -> list[str]:
    """The standard diagnostics present in ``updates`` plus every ``diag/<layer>/<qty>`` column."""
    std = [c for c in DIAGNOSTIC_COLUMNS if c in updates.columns]
    diag = sorted(c for c in updates.columns if str(c).startswith("diag/"))
    return [c for c in std + diag if updates[c].notna().any()]


def diagnostic_curves(sweep: Sweep, per_run: pd.DataFrame, n_points: int = 100) -> pd.DataFrame:
    """Median (and quartiles) over ok runs of every diagnostic column, on a common step grid.

    Long table ``env, group, label, facet, column, x, median, q25, q75, n``.
    """
    updates = sweep.updates
    if updates.empty:
        return pd.DataFrame()
    columns = diagnostic_columns(updates)
    ok = per_run[per_run["ok"]]
    by_run = {run: f.sort_values("step") for run, f in updates.groupby("run", sort=False)}
    parts = []
    for env in sorted(ok["env"].unique()):
        env_runs = ok[ok["env"] == env]
        end = float(env_runs["budget"].max())
        if not np.isfinite(end) or end <= 0:
            continue
        grid = np.linspace(0.0, end, n_points + 1)[1:]
        for group in group_order(env_runs):
            runs = [r for r in env_runs.loc[env_runs["group"] == group, "run"] if r in by_run]
            if not runs:
                continue
            label = env_runs.loc[env_runs["group"] == group, "label"].iloc[0]
            facet = env_runs.loc[env_runs["group"] == group, "facet"].iloc[0]
            for column in columns:
                curves = np.array(
                    [
                        metrics.interpolate_curve(
                            by_run[r]["step"].to_numpy(float),
                            by_run[r][column].to_numpy(float),
                            grid,
                        )
                        if column in by_run[r]
                        else np.full(grid.shape, np.nan)
                        for r in runs
                    ]
                )
                if not np.isfinite(curves).any():
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    q25, med, q75 = np.nanpercentile(curves, [25, 50, 75], axis=0)
                parts.append(
                    pd.DataFrame(
                        {
                            "env": env,
                            "group": group,
                            "label": label,
                            "facet": facet,
                            "column": column,
                            "x": grid,
                            "median": med,
                            "q25": q25,
                            "q75": q75,
                            "n": len(runs),
                        }
                    )
                )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
