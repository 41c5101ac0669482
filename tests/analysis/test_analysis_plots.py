"""Plot functions take data and an ``ax`` / ``fig`` and return it; colours are fixed per label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import plots


def test_label_colours_are_fixed_and_distinct():
    known = ["paper", "baselines", "kfac-pytorch", "ikostrikov", "kfac-reduce", "a2c"]
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


def test_diagnostic_panels_group_kl_and_layers():
    columns = ["kl", "predicted_kl", "nu", "lr", "diag/fc/A_trace", "diag/conv/A_trace"]
    panels = plots.diagnostic_panels(columns)
    assert panels[0][1] == ["kl", "predicted_kl"]
    assert [p[1] for p in panels[1:3]] == [["nu"], ["lr"]]
    assert panels[3] == ("A_trace per layer", ["diag/fc/A_trace", "diag/conv/A_trace"], True)
