"""Figures. Every function takes its data and an ``ax`` (or a ``fig`` for multi-panel figures)
and returns it; nothing is shown or saved here (the report saves PNG + SVG).

Colours are fixed per label across every figure (:func:`label_color`): the five variants have
reserved colours from the colour-blind-safe seaborn "colorblind" palette and the first-order
controls reserved greys (``a2c`` light, ``ppo`` dark, told apart by lightness); any other label
gets a deterministic colour from the rest of that palette (CRC32 of its name), so a label looks
the same in every figure and every report. The diagnostics figures are in
:mod:`analysis.plots_diagnostics`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Reserved colours (seaborn "colorblind" palette entries).
LABEL_COLORS: dict[str, str] = {
    "paper": "#0173b2",
    "baselines": "#de8f05",
    "kfac-pytorch": "#029e73",
    "ikostrikov": "#d55e00",
    "kfac-reduce": "#cc78bc",
    "a2c": "#949494",  # the first-order controls are greys: light (a2c) and dark (ppo)
    "ppo": "#4a4a4a",
}
#: Colours for labels outside :data:`LABEL_COLORS` (the rest of "colorblind" + darker tones).
FALLBACK_COLORS: tuple[str, ...] = (
    "#ca9161",
    "#fbafe4",
    "#ece133",
    "#56b4e9",
    "#1b4f72",
    "#7d3c98",
    "#117a65",
    "#7b241c",
)
LINESTYLES = ("-", "--", ":", "-.")


def label_color(label: str) -> str:
    """The fixed colour of ``label`` (reserved, else deterministic from its CRC32)."""
    if label in LABEL_COLORS:
        return LABEL_COLORS[label]
    return FALLBACK_COLORS[zlib.crc32(label.encode()) % len(FALLBACK_COLORS)]


def palette(labels: Sequence[str]) -> dict[str, str]:
    """``{label: colour}`` for the given labels."""
    return {label: label_color(label) for label in labels}


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 5.0, height: float = 3.6) -> Figure:
    """A figure sized ``ncols·width × nrows·height`` inches, constrained layout."""
    fig = plt.figure(figsize=(width * ncols, height * nrows), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False)
    return fig


def close(fig: Figure) -> None:
    """Release a figure's memory."""
    plt.close(fig)


def _legend(ax: Axes, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize="small", frameon=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# Learning curves


def plot_learning_curves(
    ax: Axes,
    curves: pd.DataFrame,
    xlabel: str = "env steps",
    ylabel: str = "episode return",
    title: str = "",
    metric_name: str = "IQM",
) -> Axes:
    """Across-seed curves with their CI band, one line per group coloured by its label.

    ``curves``: rows ``group, label, x, point, lo, hi, n`` (from
    :func:`analysis.tables.aggregate_curves`) for one env and one facet.
    """
    for group, frame in curves.groupby("group", sort=False):
        color = label_color(str(frame["label"].iloc[0]))
        n = int(frame["n"].iloc[0])
        ax.plot(frame["x"], frame["point"], color=color, lw=1.8, label=f"{group} (n={n})")
        ax.fill_between(frame["x"], frame["lo"], frame["hi"], color=color, alpha=0.2, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} ({metric_name} over seeds)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, loc="best")
    return ax


def learning_curve_figure(
    fig: Figure, curves: pd.DataFrame, env: str, xlabel: str, metric_name: str
) -> Figure:
    """One panel per facet (extra-axis value) of one env's curves. ``fig`` from
    :func:`new_figure` with one row and one column per facet."""
    facets = list(dict.fromkeys(curves["facet"]))
    axes = fig.axes
    for ax, facet in zip(axes, facets):
        title = env if facet == "all runs" else f"{env} — {facet}"
        plot_learning_curves(
            ax,
            curves[curves["facet"] == facet],
            xlabel=xlabel,
            title=title,
            metric_name=metric_name,
        )
    return fig


# ---------------------------------------------------------------------------------------------
# Aggregates


def plot_interval_estimates(
    ax: Axes,
    table: pd.DataFrame,
    xlabel: str = "normalised score",
    title: str = "",
    name_column: str = "group",
) -> Axes:
    """Point estimate and CI per group as horizontal intervals (rliable-style).

    ``table``: rows ``group, label, point, lo, hi`` in display order (top to bottom);
    ``name_column`` gives the tick labels.
    """
    groups = list(table[name_column])
    y = np.arange(len(groups))[::-1]
    for yi, row in zip(y, table.itertuples()):
        color = label_color(str(row.label))
        ax.hlines(yi, row.lo, row.hi, color=color, lw=6, alpha=0.55)
        ax.plot([row.point, row.point], [yi - 0.3, yi + 0.3], color="black", lw=1.5)
    ax.set_yticks(y, groups)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def aggregate_figure(fig: Figure, table: pd.DataFrame, metrics: Sequence[str]) -> Figure:
    """Rows: facets; columns: aggregate metrics. ``table``: ``facet, group, label, metric,
    point, lo, hi``; ``fig`` with ``len(facets)`` rows and ``len(metrics)`` columns."""
    facets = list(dict.fromkeys(table["facet"]))
    grid = np.array(fig.axes).reshape(len(facets), len(metrics))
    metric_titles = {"iqm": "IQM", "mean": "Mean", "median": "Median"}
    for i, facet in enumerate(facets):
        for j, metric in enumerate(metrics):
            part = table[(table["facet"] == facet) & (table["metric"] == metric)]
            title = metric_titles.get(metric, metric)
            if facet != "all runs":
                title = f"{title} — {facet}"
            names = "group" if facet == "all runs" else "label"
            plot_interval_estimates(grid[i, j], part, "normalised score", title, names)
    return fig


def plot_performance_profiles(
    ax: Axes,
    taus: np.ndarray,
    profiles: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    labels: Mapping[str, str],
    title: str = "Performance profiles",
) -> Axes:
    """Score distributions ``P(score > τ)`` with CI bands; ``labels`` maps group → label."""
    for i, (group, (point, lo, hi)) in enumerate(profiles.items()):
        color = label_color(labels.get(group, group))
        style = LINESTYLES[(i if labels.get(group, group) != group else 0) % len(LINESTYLES)]
        ax.plot(taus, point, color=color, lw=1.8, ls=style, label=group)
        ax.fill_between(taus, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, loc="best")
    return ax


def plot_probability_of_improvement(
    ax: Axes, table: pd.DataFrame, title: str = "Probability of improvement"
) -> Axes:
    """``P(X > Y)`` with CI per pair, one row per pair; 0.5 (no difference) marked.

    ``table``: rows ``x, y, p, lo, hi, x_label`` (``x_label`` colours the interval).
    """
    y = np.arange(len(table))[::-1]
    for yi, row in zip(y, table.itertuples()):
        color = label_color(str(getattr(row, "x_label", row.x)))
        ax.hlines(yi, row.lo, row.hi, color=color, lw=6, alpha=0.55)
        ax.plot([row.p, row.p], [yi - 0.3, yi + 0.3], color="black", lw=1.5)
    ax.set_yticks(y, [f"P({r.x} > {r.y})" for r in table.itertuples()])
    ax.axvline(0.5, color="black", ls="--", lw=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("probability of improvement")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


# ---------------------------------------------------------------------------------------------
# Final scores


def plot_final_scores(
    ax: Axes,
    summary: pd.DataFrame,
    per_run: pd.DataFrame,
    title: str = "",
    name_column: str = "group",
) -> Axes:
    """Bars: final-score mean per group with its 95% CI; dots: the individual seeds.

    ``summary``: rows ``group, label, final_mean, final_lo, final_hi`` (one env, one facet);
    ``per_run``: rows ``group, final_score, ok`` for the same runs; ``name_column`` gives the
    tick labels.
    """
    x = np.arange(len(summary))
    for xi, row in zip(x, summary.itertuples()):
        color = label_color(str(row.label))
        ax.bar(xi, row.final_mean, color=color, alpha=0.75, width=0.7)
        if np.isfinite(row.final_lo):
            ax.errorbar(
                xi,
                row.final_mean,
                yerr=[[row.final_mean - row.final_lo], [row.final_hi - row.final_mean]],
                color="black",
                capsize=4,
                lw=1.2,
            )
        seeds = per_run[(per_run["group"] == row.group) & per_run["ok"]]["final_score"]
        jitter = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
        ax.scatter(xi + jitter[: len(seeds)], seeds, color="black", s=12, zorder=3)
    ax.set_xticks(x, list(summary[name_column]), rotation=30, ha="right")
    ax.set_ylabel("final score (episode return)")
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return ax


def final_score_figure(fig: Figure, summary: pd.DataFrame, per_run: pd.DataFrame) -> Figure:
    """Rows: facets; columns: envs. ``summary`` from :func:`analysis.tables.results_table`
    with a ``facet`` column; ``fig`` with ``len(facets)`` rows and ``len(envs)`` columns."""
    facets = list(dict.fromkeys(summary["facet"]))
    envs = list(dict.fromkeys(summary["env"]))
    grid = np.array(fig.axes).reshape(len(facets), len(envs))
    for i, facet in enumerate(facets):
        for j, env in enumerate(envs):
            part = summary[(summary["facet"] == facet) & (summary["env"] == env)]
            runs = per_run[(per_run["facet"] == facet) & (per_run["env"] == env)]
            title = env if facet == "all runs" else f"{env} — {facet}"
            names = "group" if facet == "all runs" else "label"
            plot_final_scores(grid[i, j], part, runs, title, names)
    return fig


def plot_axis_effect(
    ax: Axes, table: pd.DataFrame, axis: str, ylabel: str, title: str = ""
) -> Axes:
    """One line per label across the values of a sweep axis, with CI error bars.

    ``table``: rows ``label, <axis>, point, lo, hi``.
    """
    values = list(dict.fromkeys(table[axis]))
    pos = {v: i for i, v in enumerate(values)}
    labels = list(dict.fromkeys(table["label"]))
    offsets = np.linspace(-0.08, 0.08, len(labels)) if len(labels) > 1 else [0.0]
    for offset, label in zip(offsets, labels):
        part = table[table["label"] == label]
        xs = np.array([pos[v] for v in part[axis]]) + offset
        color = label_color(str(label))
        ax.errorbar(
            xs,
            part["point"],
            yerr=[part["point"] - part["lo"], part["hi"] - part["point"]],
            color=color,
            marker="o",
            capsize=3,
            lw=1.5,
            label=str(label),
        )
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, loc="best")
    return ax
