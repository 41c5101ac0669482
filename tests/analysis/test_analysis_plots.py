"""Plot functions take data and an ``ax`` / ``fig`` and return it; colours are fixed per label."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from analysis import plots, plots_diagnostics


def test_label_colours_are_fixed_and_distinct():
    known = ["paper", "baselines", "kfac-pytorch", "ikostrikov", "kfac-reduce", "a2c", "ppo"]
    colours = [plots.label_color(label) for label in known]
    assert len(set(colours)) == len(known)
    assert plots.label_color("paper") == "#0173b2"
    # unknown labels: deterministic, and never one of the reserved colours
    assert plots.label_color("my-variant") == plots.label_color("my-variant")
    assert plots.label_color("my-variant") not in colours
    assert plots.palette(["a2c", "x"]) == {"a2c": "#949494", "x": plots.label_color("x")}


def _curves() -> pd.DataFrame:
    x = np.linspace(100, 1000, 10)
    rows = []
    for group, label in (("paper", "paper"), ("a2c", "a2c")):
        point = x / 10 if label == "paper" else x / 20
        rows.append(
            pd.DataFrame(
                {
                    "group": group,
                    "label": label,
                    "facet": "all runs",
                    "x": x,
                    "point": point,
                    "lo": point - 1,
                    "hi": point + 1,
                    "n": 3,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_axes_level_plots_return_their_ax():
    fig = plots.new_figure(1, 1)
    ax = fig.axes[0]
    assert plots.plot_learning_curves(ax, _curves(), "env steps", title="CartPole-v1") is ax
    assert ax.get_xlabel() == "env steps" and ax.get_title() == "CartPole-v1"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["paper (n=3)", "a2c (n=3)"]
    assert ax.get_lines()[0].get_color() == plots.label_color("paper")
    plots.close(fig)

    table = pd.DataFrame(
        {"group": ["paper", "a2c"], "label": ["paper", "a2c"], "point": [0.8, 0.3],
         "lo": [0.7, 0.2], "hi": [0.9, 0.4]}
    )  # fmt: skip
    fig = plots.new_figure(1, 1)
    assert plots.plot_interval_estimates(fig.axes[0], table, title="IQM") is fig.axes[0]
    plots.close(fig)

    poi = pd.DataFrame({"x": ["paper"], "y": ["a2c"], "p": [0.9], "lo": [0.7], "hi": [1.0]})
    fig = plots.new_figure(1, 1)
    ax = plots.plot_probability_of_improvement(fig.axes[0], poi)
    assert ax is fig.axes[0] and ax.get_xlabel() == "probability of improvement"
    plots.close(fig)

    taus = np.linspace(0, 1, 5)
    profile = (np.linspace(1, 0, 5), np.linspace(1, 0, 5) - 0.1, np.linspace(1, 0, 5) + 0.1)
    fig = plots.new_figure(1, 1)
    ax = plots.plot_performance_profiles(fig.axes[0], taus, {"paper": profile}, {"paper": "paper"})
    assert ax is fig.axes[0]
    plots.close(fig)

    summary = pd.DataFrame(
        {"group": ["paper"], "label": ["paper"], "final_mean": [400.0], "final_lo": [380.0],
         "final_hi": [420.0]}
    )  # fmt: skip
    per_run = pd.DataFrame(
        {"group": ["paper"] * 3, "final_score": [380.0, 400.0, 420.0], "ok": [True] * 3}
    )
    fig = plots.new_figure(1, 1)
    ax = plots.plot_final_scores(fig.axes[0], summary, per_run, "CartPole-v1")
    assert ax is fig.axes[0] and "final score" in ax.get_ylabel()
    plots.close(fig)


def _diagnostic_frame(n_groups: int) -> pd.DataFrame:
    """Long table as :func:`analysis.curves.diagnostic_curves` returns it, ``n_groups`` groups."""
    labels = ["paper", "baselines", "kfac-pytorch", "ikostrikov", "kfac-reduce", "a2c", "ppo"]
    rows = []
    x = np.linspace(1e3, 1e5, 20)
    for g in range(n_groups):
        label = labels[g % len(labels)]
        group = label if g < len(labels) else f"{label} [decay=0.{g}]"
        columns = ["kl", "kl_ratio", "nu", "lr"] if label not in ("a2c", "ppo") else ["lr"]
        columns += ["diag/trunk.0/A_trace", "diag/pi/G_cond", "diag/pi/A_clipped"]
        for column in columns:
            if label in ("a2c", "ppo") and column.startswith("diag/"):
                continue
            value = 0.0 if column.endswith("clipped") else 1e-3 * (g + 1) * (1 + x / 1e5)
            for xi, v in zip(x, np.broadcast_to(value, x.shape)):
                rows.append({"env": "E", "group": group, "label": label, "facet": "all runs",
                             "column": column, "x": xi, "median": v, "q25": 0.9 * v,
                             "q75": 1.1 * v, "n": 3})  # fmt: skip
    return pd.DataFrame(rows)


def _overlaps(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_diagnostics_figures_have_few_lines_and_legends_outside_the_axes():
    frame = _diagnostic_frame(n_groups=9)
    drawn = list(plots_diagnostics.figures(frame, "E"))
    kinds = [(kind, number) for kind, number, _ in drawn]
    # 9 groups → two chunks (6 + 3); each chunk has a per-update and a per-layer figure
    assert kinds == [("diagnostics", 1), ("factors", 1), ("diagnostics", 2), ("factors", 2)]
    for kind, _, fig in drawn:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        for ax in axes:
            data_lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
            assert 1 <= len(data_lines) <= plots_diagnostics.MAX_LINES, ax.get_title()
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert not _overlaps(box, ax.get_window_extent(renderer)), (kind, ax.get_title())
            assert ax.get_legend() is None
        # x tick labels of one axes do not collide
        for ax in axes:
            ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
            assert all(not _overlaps(a, b) for a, b in itertools.pairwise(ticks)), ax.get_title()
        plots.close(fig)


def test_factor_grid_rows_are_layers_and_drops_all_zero_quantities():
    frame = _diagnostic_frame(n_groups=2)
    layers, quantities = plots_diagnostics.factor_layout(
        list(dict.fromkeys(frame["column"])), frame
    )
    assert layers == ["trunk.0", "pi"]
    assert quantities == ["A_trace", "G_cond"]  # A_clipped is zero everywhere: not drawn
    fig = plots_diagnostics.factor_figure(frame, ["paper", "baselines"], "E")
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_visible())
    assert titles == ["pi: cond G", "trunk.0: tr A"]
    plots.close(fig)
    # the controls log no factors: not in the factor figure's legend
    frame = _diagnostic_frame(n_groups=7)
    fig = plots_diagnostics.factor_figure(frame, list(dict.fromkeys(frame["group"])), "E")
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names and not any(n.startswith(("a2c", "ppo")) for n in names)
    plots.close(fig)


def test_diagnostics_group_styles_differ_within_a_label():
    frame = _diagnostic_frame(n_groups=8)
    styles = plots_diagnostics.group_styles(frame)
    assert styles["paper"][0] == styles["paper [decay=0.7]"][0] == plots.label_color("paper")
    assert styles["paper"][1] != styles["paper [decay=0.7]"][1]
