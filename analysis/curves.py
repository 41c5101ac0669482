"""Learning curves and logged diagnostics on common grids, across seeds.

* :func:`run_curves` / :func:`aggregate_curves` — per-run rolling-mean return curves on a
  common step (or wall-clock) grid, then the across-seed statistic with a bootstrap CI;
* :func:`diagnostic_curves` — median and quartiles over seeds of every logged ``updates.csv``
  diagnostic (standard columns, the derived ``kl_ratio``, ``diag/<layer>/<qty>``);
* :func:`kl_ratio_table` — the median measured/predicted KL ratio of the applied step per env
  and group (issue 11 §4: ``kl`` is the measured policy KL of the step actually applied,
  ``predicted_kl`` its quadratic model ½ΔθᵀF̃Δθ over the policy parameters).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis import aggregate, metrics
from analysis.groups import group_order
from analysis.load import Sweep
from analysis.tables import DEFAULT_OPTIONS, MetricOptions


def run_curves(
    sweep: Sweep,
    per_run: pd.DataFrame,
    x: str = "step",
    options: MetricOptions = DEFAULT_OPTIONS,
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
# Logged diagnostics (updates.csv)

#: Standard per-update diagnostics, in panel order; ``kl_ratio`` is derived (:func:`kl_ratio`).
DIAGNOSTIC_COLUMNS = (
    "kl",
    "predicted_kl",
    "kl_ratio",
    "nu",
    "trust_q",
    "lr",
    "clip_fraction",
)
FIRST_UPDATES = 10  # the early-training window of the KL-ratio table


def kl_ratio(updates: pd.DataFrame) -> pd.Series:
    """Measured over predicted KL of the applied step, per logged update (NaN where undefined).

    Defined where ``kl`` is finite, ``predicted_kl`` finite and > 0, and ``predicted_kl_total``
    is finite: that column marks the applied-step schema (``kfac_bench/store.py``
    ``UPDATE_COLUMNS``). Older runs logged ``predicted_kl`` of the steady-state step lr·ν·Δ
    instead, which is not comparable with the measured KL, so their ratio is left undefined.
    Columns missing from ``updates`` (old runs, controls) are treated as absent.
    """
    needed = ("kl", "predicted_kl", "predicted_kl_total")
    if updates.empty or any(c not in updates.columns for c in needed):
        return pd.Series(np.nan, index=updates.index, dtype=float)
    kl = pd.to_numeric(updates["kl"], errors="coerce")
    predicted = pd.to_numeric(updates["predicted_kl"], errors="coerce")
    total = pd.to_numeric(updates["predicted_kl_total"], errors="coerce")
    valid = np.isfinite(kl) & np.isfinite(predicted) & (predicted > 0) & np.isfinite(total)
    return (kl / predicted.where(valid)).where(valid)


def with_kl_ratio(updates: pd.DataFrame) -> pd.DataFrame:
    """``updates`` with the derived ``kl_ratio`` column (a copy)."""
    return updates.assign(kl_ratio=kl_ratio(updates)) if not updates.empty else updates


def old_schema_runs(updates: pd.DataFrame) -> list[str]:
    """Runs that logged ``predicted_kl`` but no ``predicted_kl_total`` (the pre-issue-11
    steady-state prediction): their KL ratio is not computed."""
    if updates.empty or "predicted_kl" not in updates.columns:
        return []
    total = (
        updates["predicted_kl_total"]
        if "predicted_kl_total" in updates.columns
        else pd.Series(np.nan, index=updates.index)
    )
    frame = pd.DataFrame(
        {"run": updates["run"], "p": updates["predicted_kl"].notna(), "t": total.notna()}
    )
    per_run = frame.groupby("run", sort=True)[["p", "t"]].any()
    return list(per_run.index[per_run["p"] & ~per_run["t"]])


def diagnostic_columns(updates: pd.DataFrame) -> list[str]:
    """The standard diagnostics present in ``updates`` plus every ``diag/<layer>/<qty>`` column
    (in logged order, which is the network's layer order), each only if logged somewhere."""
    std = [c for c in DIAGNOSTIC_COLUMNS if c in updates.columns]
    diag = [c for c in updates.columns if str(c).startswith("diag/")]
    return [c for c in std + diag if updates[c].notna().any()]


def diagnostic_curves(sweep: Sweep, per_run: pd.DataFrame, n_points: int = 100) -> pd.DataFrame:
    """Median (and quartiles) over ok runs of every diagnostic column, on a common step grid.

    Long table ``env, group, label, facet, column, x, median, q25, q75, n`` (``n``: runs of the
    group that logged the column).
    """
    updates = with_kl_ratio(sweep.updates)
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
            members = env_runs[env_runs["group"] == group]
            runs = [r for r in members["run"] if r in by_run]
            for column in columns:
                curves = np.array(
                    [
                        metrics.interpolate_curve(
                            by_run[r]["step"].to_numpy(float),
                            by_run[r][column].to_numpy(float),
                            grid,
                        )
                        for r in runs
                    ]
                ).reshape(len(runs), len(grid))
                logged = np.isfinite(curves).any(axis=1)
                if not logged.any():
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    q25, med, q75 = np.nanpercentile(curves[logged], [25, 50, 75], axis=0)
                parts.append(
                    pd.DataFrame(
                        {
                            "env": env,
                            "group": group,
                            "label": members["label"].iloc[0],
                            "facet": members["facet"].iloc[0],
                            "column": column,
                            "x": grid,
                            "median": med,
                            "q25": q25,
                            "q75": q75,
                            "n": int(logged.sum()),
                        }
                    )
                )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


KL_RATIO_COLUMNS = ["env", "group", "label", "runs", "updates", "median", "q25", "q75",
                    "median_first"]  # fmt: skip


def kl_ratio_table(updates: pd.DataFrame, per_run: pd.DataFrame) -> pd.DataFrame:
    """Median ``kl / predicted_kl`` of the applied step per env × group (and per group over all
    envs, ``env = "all envs"``, when there are several), over the ok runs' logged updates.

    Columns :data:`KL_RATIO_COLUMNS`: ``runs`` and ``updates`` with a defined ratio, the pooled
    ``median`` and quartiles of the per-update ratio, and ``median_first``: the median over each
    run's first :data:`FIRST_UPDATES` logged updates (where running-average lag is largest).
    """
    if updates.empty:
        return pd.DataFrame(columns=KL_RATIO_COLUMNS)
    ok = per_run[per_run["ok"]]
    frame = updates.assign(kl_ratio=kl_ratio(updates)).sort_values(["run", "step"])
    frame = frame[frame["run"].isin(ok["run"]) & frame["kl_ratio"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=KL_RATIO_COLUMNS)
    info = ok.set_index("run")
    frame = frame.assign(
        group=frame["run"].map(info["group"]),
        first=frame.groupby("run").cumcount() < FIRST_UPDATES,
    )
    envs = sorted(frame["env"].unique())
    scopes = [(env, frame[frame["env"] == env]) for env in envs]
    if len(envs) > 1:
        scopes.append(("all envs", frame))
    rows = []
    for scope, part in scopes:
        for group in group_order(ok[ok["group"].isin(part["group"])]):
            mine = part[part["group"] == group]
            q25, med, q75 = np.percentile(mine["kl_ratio"], [25, 50, 75])
            rows.append(
                {
                    "env": scope,
                    "group": group,
                    "label": info.loc[mine["run"].iloc[0], "label"],
                    "runs": int(mine["run"].nunique()),
                    "updates": len(mine),
                    "median": float(med),
                    "q25": float(q25),
                    "q75": float(q75),
                    "median_first": float(np.median(mine.loc[mine["first"], "kl_ratio"])),
                }
            )
    return pd.DataFrame(rows, columns=KL_RATIO_COLUMNS)


def equal_time_table(curves_wall: pd.DataFrame, per_run: pd.DataFrame) -> pd.DataFrame:
    """Every group's across-seed curve at the same wall-clock second, per env.

    The second is ``t* = min over groups of the median run wall time`` (the fastest group's
    typical finish), so each group's value is read where it has spent the same compute. Rows
    ``env, group, seconds, point, lo, hi, n, steps`` where ``point [lo, hi]`` is the aggregated
    trailing-mean return on the wall-clock grid at the last point ≤ t*, and ``steps`` the median
    env steps the group's runs had reached by t* (steps/s × t*, capped at the run's steps).
    """
    columns = ["env", "group", "seconds", "point", "lo", "hi", "n", "steps"]
    ok = per_run[per_run["ok"]]
    rows = []
    for env, part in curves_wall.groupby("env", sort=False):
        runs = ok[ok["env"] == env]
        if runs.empty:
            continue
        t_star = float(runs.groupby("group")["wall_time"].median().min())
        for group in group_order(runs):
            curve = part[(part["group"] == group) & (part["x"] <= t_star)].dropna(subset=["point"])
            members = runs[runs["group"] == group]
            if curve.empty or members.empty:
                continue
            last = curve.iloc[-1]
            steps = np.minimum(members["steps_per_s"] * t_star, members["steps"]).median()
            rows.append([env, group, t_star, last["point"], last["lo"], last["hi"],
                         int(last["n"]), float(steps)])  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
