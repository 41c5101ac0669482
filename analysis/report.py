"""The analysis pipeline end to end: sweep directory → tables, figures, report.md/.html.

``analyze(runs_dir)`` loads the sweep (:mod:`analysis.load`), computes per-run metrics and
aggregates (:mod:`analysis.tables`, :mod:`analysis.aggregate`), draws the figures
(:mod:`analysis.plots`) and writes into ``<runs_dir>/report/``:

* ``report.md`` and a self-contained ``report.html`` (figures embedded as base64 data URIs);
* ``figures/*.png`` and ``figures/*.svg``;
* CSV tables: ``runs.csv`` (per-run metrics, every run), ``results.csv`` (per env × group),
  ``aggregate.csv``, ``poi.csv``, ``support.csv``, ``normalisation.csv``, ``curves.csv`` and,
  when present, ``fidelity.csv``.

Every file is written atomically (:func:`kfac_bench.store.write_atomic`).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate, plots, tables
from analysis.compute import CONFIDENCE, METRICS, Analysis, compute
from analysis.load import load_sweep
from kfac_bench.store import write_atomic

Log = Callable[[str], None]
FILE_MODE = 0o644  # report files are meant to be read by others
__all__ = ["CONFIDENCE", "METRICS", "Analysis", "analyze", "compute", "write_report"]
CI_TEXT = "95% percentile stratified-bootstrap CI ({reps} resamples, seed {seed})"


# ---------------------------------------------------------------------------------------------
# Atomic writes


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`kfac_bench.store.write_atomic`)."""
    write_atomic(path, text.encode("utf-8"), mode=FILE_MODE)


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV atomically (no index)."""
    write_text_atomic(path, frame.to_csv(index=False))


def save_figure(fig: Any, directory: Path, name: str) -> Path:
    """Save ``fig`` as ``name.png`` and ``name.svg`` atomically; return the PNG path."""
    for ext in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=110)
        write_atomic(directory / f"{name}.{ext}", buffer.getvalue(), mode=FILE_MODE)
    plots.close(fig)
    return directory / f"{name}.png"


# ---------------------------------------------------------------------------------------------
# Markdown helpers


def fmt(value: Any, digits: int = 4) -> str:
    """Compact number formatting for tables; NaN/None → ``—``."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "—"
        if abs(value) >= 10_000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def ci_text(point: float, lo: float, hi: float) -> str:
    """``point [lo, hi]``."""
    if not np.isfinite(point):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt(point)
    return f"{fmt(point)} [{fmt(lo)}, {fmt(hi)}]"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub/Markdown pipe table; cells are formatted with :func:`fmt` unless strings."""

    def cell(v: Any) -> str:
        text = v if isinstance(v, str) else fmt(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class _Doc:
    """Accumulates report markdown and numbers the figures."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def add(self, text: str = "") -> None:
        self.parts.append(text)

    def figure(self, png: Path, root: Path, caption: str) -> None:
        self.figures += 1
        rel = png.relative_to(root).as_posix()
        self.add(f"![Figure {self.figures}]({rel})\n\n*Figure {self.figures}. {caption}*\n")

    def text(self) -> str:
        return "\n".join(self.parts).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Report sections


def _provenance_section(doc: _Doc, a: Analysis) -> None:
    runs = a.sweep.runs
    doc.add("## What was run\n")
    meta = a.sweep.meta
    doc.add(f"- Sweep: **{a.sweep.name}** (`{a.sweep.root}`)")
    if meta.get("spec_hash"):
        doc.add(f"- Spec hash: `{meta['spec_hash']}`")
    counts = runs["state"].value_counts().to_dict()
    states = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    doc.add(f"- Runs: **{len(runs)}** ({states}); used in the statistics: {int(runs['ok'].sum())}")
    doc.add(f"- Labels: {', '.join(tables.label_order(runs['label']))}")
    doc.add(f"- Environments: {', '.join(sorted(runs['env'].unique()))}")
    if a.sweep.axes:
        for axis in a.sweep.axes:
            doc.add(f"- Extra axis `{axis}`: {', '.join(sorted(runs[axis].unique()))}")
    presets = sorted(p for p in runs["preset"].dropna().unique() if p)
    if presets:
        doc.add(f"- Presets: {', '.join(presets)}")
    commits = runs.loc[runs["git_commit"].fillna("") != "", ["git_commit", "git_dirty"]]
    if len(commits):
        items = []
        for (commit, dirty), n in commits.value_counts(dropna=False).items():
            items.append(f"`{commit[:12]}`{' (dirty)' if dirty is True else ''} × {n}")
        doc.add(f"- Git commit: {', '.join(items)}")
    versions: dict[str, set[str]] = {}
    for entry in runs["versions"]:
        for key, value in (entry or {}).items() if isinstance(entry, dict) else []:
            versions.setdefault(str(key), set()).add(str(value))
    if versions:
        text = "; ".join(f"{k} {', '.join(sorted(v))}" for k, v in sorted(versions.items()))
        doc.add(f"- Versions: {text}")
    for column, name in (("host", "Hosts"), ("device", "Devices")):
        values = sorted(v for v in runs[column].dropna().unique() if v)
        if values:
            doc.add(f"- {name}: {', '.join(values)}")
    started = sorted(v for v in runs["started"].dropna().unique() if v)
    if started:
        doc.add(f"- Started: {started[0]} … {started[-1]}")
    doc.add("")
    if meta.get("spec"):
        doc.add('<details markdown="1"><summary>Sweep spec (sweep.json)</summary>\n')
        doc.add("```json\n" + json.dumps(meta["spec"], indent=2, default=str) + "\n```\n")
        doc.add("</details>\n")

    bad = runs[~runs["ok"]]
    doc.add("### Failed, diverged and unfinished runs\n")
    if bad.empty:
        doc.add("None: every run finished (`done`) with episodes.\n")
    else:
        doc.add(
            f"{len(bad)} run(s) are listed here and **excluded from the statistics** "
            "(their rows stay in `runs.csv`):\n"
        )
        rows = [
            [
                f"`{r.run}`",
                r.state,
                f"{fmt(r.steps)} / {fmt(r.budget)}",
                r.issue or "—",
            ]
            for r in bad.itertuples()
        ]
        doc.add(md_table(["run", "state", "steps / budget", "issue (error)"], rows) + "\n")


def _methods_section(doc: _Doc, a: Analysis) -> None:
    o = a.options
    ci = CI_TEXT.format(reps=a.reps, seed=a.seed)
    doc.add("## Methods\n")
    doc.add(
        f"- **Final score**: mean return of the episodes that finished in the last "
        f"{o.final_fraction:.0%} of the run's step budget; if fewer than {o.final_min_episodes} "
        f"episodes finished there, the mean of the last {o.final_fallback} episodes."
    )
    doc.add(
        f"- **Learning curves**: per run, the trailing mean of the last {o.curve_window} "
        f"episode returns, linearly interpolated onto {o.grid_points} evenly spaced env steps "
        "(or seconds) and held after the run's last episode; across seeds the "
        f"{aggregate.METRIC_NAMES[a.metric]} with a bootstrap CI over runs. Points where fewer "
        "than half the runs have data are not drawn."
    )
    doc.add(
        "- **AUC**: area under the per-run learning curve divided by the step span (the "
        "average return over training)."
    )
    doc.add(
        f"- **Steps to threshold**: first env step at which the trailing mean of the last "
        f"{o.threshold_window} episodes (at least {o.threshold_min_episodes}) reaches the "
        "threshold (from `sweep.json` `thresholds`, else `gymnasium.spec(env).reward_threshold`)."
        " Tables show the median over the seeds that reached it and how many did."
    )
    doc.add("- **Throughput**: env steps / wall-clock seconds of each run.")
    doc.add(
        "- **Normalised score**: (final − random) / (best − random) per env; references in the "
        "table below (`analysis/references.py` cites the sources)."
    )
    doc.add(
        "- **Aggregates** (Agarwal et al. 2021): IQM (25% trimmed mean of all runs × envs), "
        "mean and median of per-env means, performance profiles and the probability of "
        f"improvement, each with a {ci}."
    )
    doc.add(
        "- **Statistically supported** difference: the two 95% CIs do not overlap, or the "
        "P(improvement) CI excludes 0.5. Pairs compared: two labels at the same values of the "
        "extra sweep axes, or one label at two values of one axis. No correction for multiple "
        "comparisons; with fewer "
        "than ~5 seeds per group percentile-bootstrap CIs are too narrow, so read them as "
        "indicative.\n"
    )
    rows = [
        [
            r.env,
            fmt(r.low),
            r.low_source,
            fmt(r.high),
            r.high_source,
            r.reference,
        ]
        for r in a.bounds.itertuples()
    ]
    doc.add(
        md_table(["env", "random (0)", "source", "best (1)", "source", "reference"], rows) + "\n"
    )


def _results_section(doc: _Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
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


def _curves_section(doc: _Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
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
            name = f"curves_{kind}_{_slug(env)}"
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


def _aggregate_section(doc: _Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    doc.add("## Aggregate performance (normalised scores)\n")
    if not a.scores:
        doc.add("No scores to aggregate.\n")
        return
    ci = CI_TEXT.format(reps=a.reps, seed=a.seed)
    doc.add(
        f"Final scores normalised per env, pooled over {len(a.envs)} env(s): {', '.join(a.envs)}.\n"
    )
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

    scope_key = "aggregate" if len(a.envs) > 1 else a.envs[0]
    poi = a.poi[a.poi["scope"] == scope_key]
    if not poi.empty:
        log("writing figure probability_of_improvement")
        fig = plots.new_figure(1, 1, width=6.5, height=0.8 + 0.38 * len(poi))
        scope = "all envs" if len(a.envs) > 1 else a.envs[0]
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


def _axis_effect_figures(doc: _Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    runs = a.per_run.drop_duplicates("group").set_index("group")
    table = a.aggregates[a.aggregates["metric"] == a.metric].copy()
    for axis in a.sweep.axes:
        table[axis] = table["group"].map(runs[axis])
    metric_name = aggregate.METRIC_NAMES[a.metric]
    for axis in a.sweep.axes:
        name = f"axis_{_slug(axis)}"
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


def _support_section(doc: _Doc, a: Analysis) -> None:
    doc.add("## Which differences are statistically supported?\n")
    if a.support.empty:
        doc.add("Fewer than two groups with results: nothing to compare.\n")
        return
    metric_name = aggregate.METRIC_NAMES[a.metric]
    supported = a.support[a.support["supported"]]
    unsupported = a.support[~a.support["supported"]]
    doc.add(
        "A difference counts as supported when the two 95% CIs do not overlap or the "
        "P(improvement) 95% CI excludes 0.5 (per env: final-score means; aggregate: "
        f"{metric_name} of normalised scores).\n"
    )
    if supported.empty:
        doc.add("**No difference is statistically supported** by these runs.\n")
    else:
        doc.add(f"**Supported ({len(supported)}):**\n")
        for r in supported.itertuples():
            worse = r.y if r.better == r.x else r.x
            reasons = []
            if not r.ci_overlap:
                reasons.append("CIs do not overlap")
            if r.poi_excludes_half:
                reasons.append("P(improvement) CI excludes 0.5")
            scope = "across envs" if r.scope == "aggregate" else f"on {r.scope}"
            doc.add(
                f"- {r.better} > {worse} {scope}: {ci_text(r.x_value, r.x_lo, r.x_hi)} "
                f"({r.x}) vs {ci_text(r.y_value, r.y_lo, r.y_hi)} ({r.y}); "
                f"P({r.x} > {r.y}) = {ci_text(r.p, r.p_lo, r.p_hi)} — {', '.join(reasons)}."
            )
        doc.add("")
    if not unsupported.empty:
        doc.add(
            f"**Not supported ({len(unsupported)})** — CIs overlap and P(improvement) CI "
            "includes 0.5:\n"
        )
        for r in unsupported.itertuples():
            scope = "across envs" if r.scope == "aggregate" else f"on {r.scope}"
            doc.add(f"- {r.x} vs {r.y} {scope}: P({r.x} > {r.y}) = {ci_text(r.p, r.p_lo, r.p_hi)}.")
        doc.add("")


def _diagnostics_section(doc: _Doc, a: Analysis, out: Path, figs: Path, log: Log) -> None:
    if a.diagnostics.empty:
        return
    doc.add("## K-FAC diagnostics over training\n")
    for env in a.envs:
        part = a.diagnostics[a.diagnostics["env"] == env]
        if part.empty:
            continue
        panels = plots.diagnostic_panels(list(dict.fromkeys(part["column"])))
        if not panels:
            continue
        ncols = min(3, len(panels))
        nrows = int(np.ceil(len(panels) / ncols))
        name = f"diagnostics_{_slug(env)}"
        log(f"writing figure {name}")
        fig = plots.new_figure(nrows, ncols, width=5.0, height=3.6)
        plots.diagnostics_figure(fig, part, env)
        png = save_figure(fig, figs, name)
        doc.figure(
            png,
            out,
            f"{env}: logged K-FAC diagnostics from updates.csv against env steps — median over "
            "seeds (line) and inter-quartile range (band) per group: KL between successive "
            "policies actual vs the trust region's prediction, trust-region scale ν, learning "
            "rate, and per-layer Kronecker-factor traces / condition numbers where logged "
            "(the a2c control logs no K-FAC quantities).",
        )


def _fidelity_section(doc: _Doc, a: Analysis) -> None:
    if a.fidelity is None or a.fidelity.empty:
        return
    doc.add("## Fisher fidelity\n")
    doc.add(
        "Cosine similarity between each variant's preconditioned gradient and the exact damped "
        "natural gradient (F + λI)⁻¹g on the same batch (from `fidelity.csv`, whole-network rows "
        "when present), mean over the runs measured; 1 is a perfect match.\n"
    )
    headline = a.fidelity
    if "layer" in headline.columns and (headline["layer"] == "network").any():
        headline = headline[headline["layer"] == "network"]
    weighted = headline.assign(total=headline["cosine_mean"] * headline["n"])
    sums = weighted.groupby(["variant", "damping_mode"], sort=True)[["total", "n"]].sum()
    table = (sums["total"] / sums["n"].where(sums["n"] > 0)).unstack("damping_mode")
    headers = ["variant", *[f"damping_mode={c}" for c in table.columns]]
    rows = [[idx, *[fmt(v) for v in row]] for idx, row in table.iterrows()]
    doc.add(md_table(headers, rows) + "\n")
    if "layer" in a.fidelity.columns:
        doc.add('<details markdown="1"><summary>Per layer</summary>\n')
        rows = [
            [r.variant, r.damping_mode, r.layer, fmt(r.cosine_mean), fmt(r.cosine_std), r.n]
            for r in a.fidelity.itertuples()
        ]
        doc.add(
            md_table(["variant", "damping_mode", "layer", "mean cosine", "std", "n"], rows) + "\n"
        )
        doc.add("</details>\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# ---------------------------------------------------------------------------------------------
# HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}
th{background:#f3f3f3} img{max-width:100%} code{background:#f5f5f5;padding:0 0.2em}
pre{background:#f5f5f5;padding:0.6em;overflow-x:auto}
"""


def render_html(markdown_text: str, root: Path, title: str) -> str:
    """Render the report markdown to a self-contained HTML page (PNG figures inlined)."""
    import markdown

    def inline(match: re.Match[str]) -> str:
        path = root / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    embedded = re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", inline, markdown_text)
    body = markdown.markdown(embedded, extensions=["tables", "fenced_code", "md_in_html"])
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def write_report(a: Analysis, out: Path, log: Log) -> Path:
    """Write figures, CSV tables, report.md and report.html for ``a`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figs = out / "figures"
    doc = _Doc()
    doc.add(f"# kfac-bench report: {a.sweep.name}\n")
    doc.add(
        f"Generated by `kfac-bench analyze` (metric: {aggregate.METRIC_NAMES[a.metric]}, "
        f"{a.reps} bootstrap resamples, seed {a.seed}). Tables are also saved as CSV next to "
        "this file.\n"
    )
    _provenance_section(doc, a)
    _methods_section(doc, a)
    _results_section(doc, a, out, figs, log)
    _aggregate_section(doc, a, out, figs, log)
    _support_section(doc, a)
    _curves_section(doc, a, out, figs, log)
    _diagnostics_section(doc, a, out, figs, log)
    _fidelity_section(doc, a)

    csvs: dict[str, pd.DataFrame | None] = {
        "runs.csv": a.per_run,
        "results.csv": a.results,
        "aggregate.csv": a.aggregates,
        "poi.csv": a.poi,
        "support.csv": a.support,
        "normalisation.csv": a.bounds,
        "curves.csv": pd.concat(
            [a.curves_step.assign(x_kind="env_steps"), a.curves_wall.assign(x_kind="seconds")],
            ignore_index=True,
        ),
        "fidelity.csv": a.fidelity,
    }
    written = []
    for name, frame in csvs.items():
        if frame is None:
            continue
        log(f"writing {name}")
        write_csv_atomic(out / name, frame)
        written.append(f"`{name}`")
    doc.add("## Files\n")
    doc.add(
        f"CSV tables in this directory: {', '.join(written)}; figures (PNG and SVG) in "
        "`figures/`.\n"
    )

    text = doc.text()
    report = out / "report.md"
    log(f"writing {report}")
    write_text_atomic(report, text)
    html = render_html(text, out, f"kfac-bench report: {a.sweep.name}")
    log(f"writing {out / 'report.html'}")
    write_text_atomic(out / "report.html", html)
    return report


def analyze(
    runs_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    metric: str = "iqm",
    n_bootstrap: int = 2000,
    seed: int = 0,
    log: Log | None = None,
) -> Path:
    """Analyse a sweep directory and write the report; return the path of ``report.md``.

    ``out`` defaults to ``<runs_dir>/report``. ``metric`` (``iqm`` | ``mean`` | ``median``)
    is the across-seed statistic of the learning curves and the headline aggregate;
    ``n_bootstrap`` resamples and ``seed`` make every CI reproducible. ``log`` receives
    progress lines (default: silent). Raises FileNotFoundError / ValueError for a missing or
    empty runs directory.
    """
    log = log or (lambda _message: None)
    root = Path(runs_dir)
    sweep = load_sweep(root)
    n_bad = int((~sweep.runs["ok"]).sum())
    log(
        f"loading {len(sweep.runs)} runs from {root}"
        + (f" ({n_bad} failed/unfinished, flagged)" if n_bad else "")
    )
    analysis = compute(sweep, metric, n_bootstrap, seed)
    target = Path(out) if out is not None else root / "report"
    return write_report(analysis, target, log)
