"""Diagnostics figures from ``updates.csv``, drawn to be read by a person.

Two kinds of figure per env, each with at most :data:`MAX_LINES` groups (more groups are split
over numbered figures, facet by facet):

* ``diagnostics`` — one panel per per-update quantity: the measured KL of the applied step,
  its ratio to the predicted KL ½ΔθᵀF̃Δθ (1 = the quadratic model is exact), the trust-region
  scale ν and its q, the learning rate and PPO's clip fraction, when logged;
* ``factors`` — the per-layer Kronecker-factor diagnostics as a grid: one row per layer, one
  column per quantity (traces, condition numbers, clipped eigenvalues; a quantity that is zero
  everywhere is left out and the caption says so).

Each panel shows the median over seeds (line) and inter-quartile band per group; one legend
for the whole figure sits below the panels, outside every axes; the x ticks are few and
SI-formatted (``20k``, ``1M``). Input: the long table of
:func:`analysis.curves.diagnostic_curves` for one env.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator

from analysis.plots import LINESTYLES, label_color

MAX_LINES = 6
#: Per-update panels: column -> (title, log scale, reference line or None).
STEP_PANELS: dict[str, tuple[str, bool, float | None]] = {
    "kl": ("measured KL of the applied step", True, None),
    "kl_ratio": ("measured / predicted KL", True, 1.0),
    "nu": ("trust-region scale ν", False, None),
    "trust_q": ("trust-region q", True, None),
    "lr": ("learning rate", True, None),
    "clip_fraction": ("PPO clip fraction", False, None),
}
#: Per-layer quantities (``diag/<layer>/<qty>``) -> (title, log scale), in column order.
FACTOR_QUANTITIES: dict[str, tuple[str, bool]] = {
    "A_trace": ("tr A", True),
    "G_trace": ("tr G", True),
    "A_cond": ("cond A", True),
    "G_cond": ("cond G", True),
    "A_clipped": ("A eigenvalues clipped", False),
    "G_clipped": ("G eigenvalues clipped", False),
}


def group_chunks(frame: pd.DataFrame, max_lines: int = MAX_LINES) -> list[list[str]]:
    """Groups facet by facet, packed into chunks of at most ``max_lines`` (display order)."""
    order = list(dict.fromkeys(frame["group"]))
    facet = dict(zip(frame["group"], frame["facet"]))
    by_facet: dict[str, list[str]] = {}
    for group in order:
        by_facet.setdefault(facet[group], []).append(group)
    chunks: list[list[str]] = []
    for groups in by_facet.values():
        for start in range(0, len(groups), max_lines):
            piece = groups[start : start + max_lines]
            if chunks and len(chunks[-1]) + len(piece) <= max_lines:
                chunks[-1].extend(piece)
            else:
                chunks.append(list(piece))
    return chunks


def group_styles(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``{group: (colour, linestyle)}``: colour by label, line style by the group's rank among
    the groups of its label (so ``paper [mode=a]`` and ``paper [mode=b]`` differ)."""
    label = dict(zip(frame["group"], frame["label"]))
    seen: dict[str, int] = {}
    styles = {}
    for group in dict.fromkeys(frame["group"]):
        rank = seen.get(label[group], 0)
        seen[label[group]] = rank + 1
        styles[group] = (label_color(str(label[group])), LINESTYLES[rank % len(LINESTYLES)])
    return styles


def _format_axes(ax: Axes, log: bool, values: np.ndarray, reference: float | None) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=2))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    positive = values[np.isfinite(values) & (values > 0)]
    if log and positive.size and positive.size == np.isfinite(values).sum():
        ax.set_yscale("log")
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    if reference is not None:
        ax.axhline(reference, color="black", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize="small")


def plot_quantity(
    ax: Axes,
    frame: pd.DataFrame,
    styles: dict[str, tuple[str, str]],
    title: str,
    log: bool = False,
    reference: float | None = None,
) -> Axes:
    """Median (line) and inter-quartile band over seeds of one column, one line per group.

    ``frame``: rows ``group, x, median, q25, q75`` of one column and at most
    :data:`MAX_LINES` groups.
    """
    for group, part in frame.groupby("group", sort=False):
        color, style = styles[str(group)]
        ax.plot(part["x"], part["median"], color=color, ls=style, lw=1.6)
        ax.fill_between(part["x"], part["q25"], part["q75"], color=color, alpha=0.15, lw=0)
    _format_axes(ax, log, frame["median"].to_numpy(float), reference)
    ax.set_title(title, fontsize="medium")
    return ax


def _figure(nrows: int, ncols: int, width: float, height: float, sharex: bool) -> Figure:
    fig = plt.figure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    fig.subplots(nrows, ncols, squeeze=False, sharex=sharex)
    return fig


def _legend(fig: Figure, groups: Sequence[str], styles: dict[str, tuple[str, str]],
            runs: dict[str, int]) -> None:  # fmt: skip
    shown = [g for g in groups if g in runs]
    handles = [Line2D([], [], color=styles[g][0], ls=styles[g][1], lw=2) for g in shown]
    names = [f"{g} (n={runs[g]})" for g in shown]
    fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(shown)),
               frameon=False, fontsize="small")  # fmt: skip


def step_figure(frame: pd.DataFrame, groups: Sequence[str], env: str) -> Figure | None:
    """The per-update panels of ``groups`` (None when none of them logged any)."""
    part = frame[frame["group"].isin(groups)]
    columns = [c for c in STEP_PANELS if (part["column"] == c).any()]
    if not columns:
        return None
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig = _figure(nrows, ncols, 3.6, 2.7, sharex=False)
    styles = group_styles(frame)
    for ax, column in zip(fig.axes, columns):
        title, log, reference = STEP_PANELS[column]
        plot_quantity(ax, part[part["column"] == column], styles, title, log, reference)
        ax.set_xlabel("env steps", fontsize="small")
    for ax in fig.axes[len(columns) :]:
        ax.set_visible(False)
    _legend(fig, groups, styles, part.groupby("group")["n"].max().to_dict())
    fig.suptitle(f"{env}: per-update diagnostics (median over seeds, IQR band)")
    return fig


def factor_layout(columns: Sequence[str], frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(layers, quantities)`` of the factor grid: layers in logged order; quantities known,
    present, and not zero everywhere."""
    layers: list[str] = []
    quantities: list[str] = []
    for column in columns:
        if not column.startswith("diag/"):
            continue
        layer, quantity = column[len("diag/") :].rsplit("/", 1)
        values = frame.loc[frame["column"] == column, "median"].to_numpy(float)
        if quantity not in FACTOR_QUANTITIES or not np.nan_to_num(values).any():
            continue
        layers += [layer] if layer not in layers else []
        quantities += [quantity] if quantity not in quantities else []
    quantities.sort(key=list(FACTOR_QUANTITIES).index)
    return layers, quantities


def factor_figure(frame: pd.DataFrame, groups: Sequence[str], env: str) -> Figure | None:
    """The per-layer grid (rows: layers, columns: quantities) of ``groups``, or None."""
    part = frame[frame["group"].isin(groups)]
    layers, quantities = factor_layout(list(dict.fromkeys(part["column"])), part)
    if not layers:
        return None
    fig = _figure(len(layers), len(quantities), 2.9, 2.1, sharex=True)
    grid = np.array(fig.axes).reshape(len(layers), len(quantities))
    styles = group_styles(frame)
    for i, layer in enumerate(layers):
        for j, quantity in enumerate(quantities):
            ax = grid[i, j]
            title, log = FACTOR_QUANTITIES[quantity]
            cell = part[part["column"] == f"diag/{layer}/{quantity}"]
            if cell.empty:
                ax.set_visible(False)
                continue
            plot_quantity(ax, cell, styles, f"{layer}: {title}", log)
            if i == len(layers) - 1:
                ax.set_xlabel("env steps", fontsize="small")
    factors = part[part["column"].str.startswith("diag/")]
    _legend(fig, groups, styles, factors.groupby("group")["n"].max().to_dict())
    fig.suptitle(f"{env}: Kronecker factors per layer (median over seeds, IQR band)")
    return fig


def figures(frame: pd.DataFrame, env: str) -> Iterator[tuple[str, int, Figure]]:
    """``(kind, chunk number from 1, figure)`` for every diagnostics figure of one env."""
    if frame.empty:
        return
    for number, groups in enumerate(group_chunks(frame), start=1):
        for kind, draw in (("diagnostics", step_figure), ("factors", factor_figure)):
            fig = draw(frame, groups, env)
            if fig is not None:
                yield kind, number, fig


def caption(kind: str, env: str) -> str:
    """The report caption of a figure from :func:`figures`."""
    if kind == "diagnostics":
        return (
            f"{env}: per-update diagnostics from updates.csv against env steps — median over "
            "seeds (line) and inter-quartile range (band) per group: the measured policy KL of "
            "the applied step, its ratio to the predicted KL ½ΔθᵀF̃Δθ of the same step (dotted: "
            "1, an exact quadratic model), the trust-region scale ν and q, the learning rate and "
            "PPO's clip fraction, where logged."
        )
    return (
        f"{env}: Kronecker-factor diagnostics of the last inverse per layer (rows) — traces, "
        "condition numbers and clipped-eigenvalue counts (columns; a count that is zero "
        "throughout is not drawn) — median over seeds and inter-quartile range per group. The "
        "first-order controls (a2c, ppo) log no factors."
    )
