"""The report's figure sections: each draws its figures (:mod:`analysis.plots`,
:mod:`analysis.plots_diagnostics`), saves them (:func:`analysis.output.save_figure`) and adds
them with a caption to the :class:`~analysis.markdown.Doc`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from analysis import aggregate, plots, plots_diagnostics
from analysis.compute import METRICS, Analysis
from analysis.markdown import Doc, ci_text, fmt, md_table, slug
from analysis.output import save_figure
from analysis.sections import CI_TEXT

Log = Callable[[str], None]


def results_section(doc: Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    doc.add("## Results per environment\n")
    if a.results.empty or not a.envs:
        doc.add("No run finished with episodes; there are no results to show.\n")
        return
    missing = sorted(set(a.per_run["env"]) - set(a.envs))
    if missing:
        doc.add(f"No finished run (so no results) for: {', '.join(missing)}.\n")
    for env in a.envs:
        part = a.results[a.results["env"] == env]
        threshold = part["threshold"].iloc[0]
        doc.add(f"### {env}\n")
        source = a.per_run.loc[a.per_run["env"] == env, "threshold_source"].iloc[0]
        doc.add(f"Reward threshold: {fmt(threshold)} ({source}).\n")
        rows = [
            [
                r.group,
                f"{r.n}" + (f" (+{r.excluded} excluded)" if r.excluded else ""),
                ci_text(r.final_mean, r.final_lo, r.final_hi),
                ci_text(r.final_iqm, r.final_iqm_lo, r.final_iqm_hi),
                f"{fmt(r.steps_to_threshold)} ({r.reached}/{r.n})",
                fmt(r.auc),
                fmt(r.steps_per_s),
                fmt(r.wall_time),
            ]
            for r in part.itertuples()
        ]
        headers = [
            "group",
            "seeds",
            "final score mean [95% CI]",
            "final score IQM [95% CI]",
            "steps to threshold (reached/n)",
            "AUC",
            "env steps/s",
            "wall-clock s",
        ]
        doc.add(md_table(headers, rows) + "\n")

    shown = a.results[a.results["env"].isin(a.envs)]
    facets = list(dict.fromkeys(shown["facet"]))
    log("writing figure final_scores")
    fig = plots.new_figure(len(facets), len(a.envs), width=4.6, height=3.8)
    plots.final_score_figure(fig, shown, a.per_run)
    fig.suptitle("Final score per environment")
    png = save_figure(fig, figs, "final_scores")
    doc.figure(
        png,
        out,
        "Final score (mean return over the last 10% of each run's steps) per group: bars are "
        "the mean over seeds, error bars the 95% percentile bootstrap CI of that mean, dots the "
        "individual seeds."
        + (" One row of panels per value of the extra sweep axis." if len(facets) > 1 else ""),
    )


def curves_section(doc: Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    doc.add("## Learning curves\n")
    metric_name = aggregate.METRIC_NAMES[a.metric]
    ci = CI_TEXT.format(reps=a.reps, seed=a.seed).replace("stratified-", "")
    for kind, frame, xlabel in (
        ("steps", a.curves_step, "env steps"),
        ("wallclock", a.curves_wall, "wall-clock time (s)"),
    ):
        if frame.empty:
            continue
        for env in a.envs:
            part = frame[frame["env"] == env]
            if part.empty:
                continue
            facets = list(dict.fromkeys(part["facet"]))
            name = f"curves_{kind}_{slug(env)}"
            log(f"writing figure {name}")
            fig = plots.new_figure(1, len(facets), width=5.6, height=4.0)
            plots.learning_curve_figure(fig, part, env, xlabel, metric_name)
            png = save_figure(fig, figs, name)
            against = "env steps" if kind == "steps" else "wall-clock seconds since run start"
            doc.figure(
                png,
                out,
                f"{env}: {metric_name} over seeds of the per-run rolling mean of episode returns "
                f"({a.options.curve_window} episodes) against {against}; band: {ci} over runs.",
            )
    _equal_time(doc, a, metric_name)


def _equal_time(doc: Doc, a: Analysis, metric_name: str) -> None:
    """The table of every group at the same wall-clock second (per env)."""
    if a.equal_time.empty:
        return
    doc.add("### At equal wall-clock time\n")
    doc.add(
        f"Each group's {metric_name} trailing-mean return at the same wall-clock second per env: "
        "t* = the shortest median run time over the groups (the fastest group's typical finish), "
        'read off the wall-clock curves above; "env steps by t*" is the median over the '
        "group's runs of steps/s × t*. Wall-clock numbers depend on what else ran on the machine "
        "(see the provenance above).\n"
    )
    rows = [
        [r.env, r.group, fmt(r.seconds), ci_text(r.point, r.lo, r.hi), fmt(r.steps), r.n]
        for r in a.equal_time.itertuples()
    ]
    headers = ["env", "group", "t* (s)", f"{metric_name} return at t* [95% CI]",
               "env steps by t*", "runs"]  # fmt: skip
    doc.add(md_table(headers, rows) + "\n")


def aggregate_section(doc: Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    doc.add("## Aggregate performance (normalised scores)\n")
    if not a.scores:
        doc.add("No scores to aggregate.\n")
        return
    ci = CI_TEXT.format(reps=a.reps, seed=a.seed)
    envs = a.norm_envs
    doc.add(f"Final scores normalised per env, pooled over {len(envs)} env(s): {', '.join(envs)}.")
    left_out = [env for env in a.envs if env not in envs]
    if left_out:
        doc.add(
            f"Left out (not normalised, see the normalisation table): {', '.join(left_out)}; "
            "their raw final scores are still compared per env."
        )
    doc.add("")
    pivot = a.aggregates.pivot(index="group", columns="metric")
    rows = []
    for group in a.scores:
        rows.append(
            [group, int(pivot.loc[group, ("runs", "iqm")])]
            + [
                ci_text(
                    pivot.loc[group, ("point", m)],
                    pivot.loc[group, ("lo", m)],
                    pivot.loc[group, ("hi", m)],
                )
                for m in METRICS
            ]
        )
    doc.add(md_table(["group", "scores", "IQM [95% CI]", "mean [95% CI]", "median [95% CI]"], rows))
    doc.add("")

    facets = list(dict.fromkeys(a.facets[g] for g in a.scores))
    table = a.aggregates.copy()
    table["_order"] = table["group"].map({g: i for i, g in enumerate(a.scores)})
    table = table.sort_values("_order", kind="stable")
    log("writing figure aggregate")
    fig = plots.new_figure(len(facets), 3, width=4.4, height=max(2.2, 0.9 + 0.4 * _max_groups(a)))
    plots.aggregate_figure(fig, table, list(METRICS))
    fig.suptitle("Aggregate normalised final score")
    png = save_figure(fig, figs, "aggregate")
    doc.figure(
        png,
        out,
        "IQM, mean and median of normalised final scores (0 = random, 1 = best-known "
        f"reference) per group; black tick: point estimate, bar: {ci}."
        + (" One row per value of the extra sweep axis." if len(facets) > 1 else ""),
    )

    log("writing figure performance_profiles")
    fig = plots.new_figure(1, len(a.profiles), width=5.2, height=4.0)
    for ax, (facet, profs) in zip(fig.axes, a.profiles.items()):
        title = "Performance profiles" + ("" if facet == "all runs" else f" — {facet}")
        plots.plot_performance_profiles(ax, a.taus, profs, a.labels, title)
    png = save_figure(fig, figs, "performance_profiles")
    doc.figure(
        png,
        out,
        "Performance profiles: fraction of runs (all seeds × envs) whose normalised final score "
        f"exceeds τ; band: {ci}.",
    )

    scope_key = "aggregate" if len(envs) > 1 else envs[0]
    poi = a.poi[a.poi["scope"] == scope_key]
    if not poi.empty:
        log("writing figure probability_of_improvement")
        fig = plots.new_figure(1, 1, width=6.5, height=0.8 + 0.38 * len(poi))
        scope = "all envs" if len(envs) > 1 else envs[0]
        plots.plot_probability_of_improvement(
            fig.axes[0], poi, f"Probability of improvement ({scope})"
        )
        png = save_figure(fig, figs, "probability_of_improvement")
        doc.figure(
            png,
            out,
            "P(X > Y): probability that a random run of X has a higher normalised final score "
            "than a random run of Y on the same env, averaged over envs; bar: 95% CI from "
            f"independent stratified bootstrap of X and Y ({a.reps} resamples, seed {a.seed}); "
            "0.5 (dashed) means no difference.",
        )

    if a.sweep.axes:
        _axis_effect_figures(doc, a, out, figs, log)


def _max_groups(a: Analysis) -> int:
    counts: dict[str, int] = {}
    for g in a.scores:
        counts[a.facets[g]] = counts.get(a.facets[g], 0) + 1
    return max(counts.values(), default=1)


def _axis_effect_figures(doc: Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    runs = a.per_run.drop_duplicates("group").set_index("group")
    table = a.aggregates[a.aggregates["metric"] == a.metric].copy()
    for axis in a.sweep.axes:
        table[axis] = table["group"].map(runs[axis])
    metric_name = aggregate.METRIC_NAMES[a.metric]
    for axis in a.sweep.axes:
        name = f"axis_{slug(axis)}"
        log(f"writing figure {name}")
        fig = plots.new_figure(1, 1, width=6.0, height=4.0)
        plots.plot_axis_effect(
            fig.axes[0],
            table,
            axis,
            f"{metric_name} normalised final score",
            f"Effect of {axis}",
        )
        png = save_figure(fig, figs, name)
        doc.figure(
            png,
            out,
            f"{metric_name} of normalised final scores per label at each value of `{axis}`; "
            f"error bars: {CI_TEXT.format(reps=a.reps, seed=a.seed)}.",
        )


def diagnostics_section(doc: Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    if a.diagnostics.empty:
        return
    doc.add("## Diagnostics over training\n")
    for env in a.envs:
        part = a.diagnostics[a.diagnostics["env"] == env]
        for kind, chunk, fig in plots_diagnostics.figures(part, env):
            name = f"{kind}_{slug(env)}" + (f"_{chunk}" if chunk > 1 else "")
            log(f"writing figure {name}")
            png = save_figure(fig, figs, name)
            doc.figure(png, out, plots_diagnostics.caption(kind, env))
