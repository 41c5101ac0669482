"""The report's text sections (markdown tables and lists, no figures), one function each.

Each ``*_section(doc, a)`` appends to a :class:`~analysis.markdown.Doc` from an
:class:`~analysis.compute.Analysis`; the figure sections are in :mod:`analysis.figures`.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from analysis import aggregate, curves, significance
from analysis.compute import Analysis
from analysis.groups import label_order
from analysis.markdown import Doc, ci_text, fmt, md_table

CI_TEXT = "95% percentile stratified-bootstrap CI ({reps} resamples, seed {seed})"


def provenance_section(doc: Doc, a: Analysis) -> None:
    runs = a.sweep.runs
    doc.add("## What was run\n")
    meta = a.sweep.meta
    doc.add(f"- Sweep: **{a.sweep.name}** (`{a.sweep.root}`)")
    if meta.get("spec_hash"):
        doc.add(f"- Spec hash: `{meta['spec_hash']}`")
    counts = runs["state"].value_counts().to_dict()
    states = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    doc.add(f"- Runs: **{len(runs)}** ({states}); used in the statistics: {int(runs['ok'].sum())}")
    doc.add(f"- Labels: {', '.join(label_order(runs['label']))}")
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
    doc.add("### Runs excluded from the statistics\n")
    if bad.empty:
        doc.add(
            "None: every run finished (`done`) with episodes and a readable config.json and "
            "status.json.\n"
        )
        return
    doc.add(
        f"{len(bad)} run(s) are **excluded from the statistics**: failed, diverged or unfinished "
        "runs, runs without episodes, and runs whose config.json or status.json is missing or "
        "unreadable (their rows stay in `runs.csv`, column `issue`):\n"
    )
    rows = [
        [f"`{r.run}`", r.state, f"{fmt(r.steps)} / {fmt(r.budget)}", r.issue or "—"]
        for r in bad.itertuples()
    ]
    doc.add(md_table(["run", "state", "steps / budget", "reason (error)"], rows) + "\n")


def methods_section(doc: Doc, a: Analysis) -> None:
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
        "- **Normalised score**: (final − low) / (high − low) per env, where low is the env's "
        "random score and high its best-known score from `analysis/references.py` (which cites "
        "the sources); a bound the table lacks is the lowest / highest ok final score observed in "
        "this sweep. An observed best at or below the random score is never mapped to 1: that "
        "env is not normalised and is left out of the aggregates. The table below states which "
        "reference each bound is."
    )
    doc.add(
        "- **Aggregates** (Agarwal et al. 2021): IQM (25% trimmed mean of all runs × envs), "
        "mean and median of per-env means, performance profiles and the probability of "
        f"improvement, each with a {ci}."
    )
    doc.add(
        f"- **Statistical tests**: a {significance.TEST_NAME} per compared pair, with a "
        f"{significance.CORRECTION} correction over all compared pairs (family-wise α = "
        f"{significance.ALPHA}); *supported* also needs ≥ {significance.MIN_SEEDS} seeds in each "
        "group (details in the section on supported differences).\n"
    )
    rows = [
        [r.env, fmt(r.low), r.low_source, fmt(r.high), r.high_source, r.note or "—", r.reference]
        for r in a.bounds.itertuples()
    ]
    headers = ["env", "low (0)", "low is", "high (1)", "high is", "note", "reference sources"]
    doc.add(md_table(headers, rows) + "\n")


def _pair_line(r: Any, metric_name: str) -> str:
    """One compared pair: direction, effect sizes, test, correction and seed counts."""
    x, y = r.x, r.y
    scope = "across envs" if r.scope == "aggregate" else f"on {r.scope}"
    if r.better:
        worse = y if r.better == x else x
        head = f"{r.better} > {worse} {scope}"
    else:
        head = f"{x} vs {y} {scope}"
    value = "mean final score" if r.scope != "aggregate" else metric_name
    parts = [
        f"{value} {ci_text(r.x_value, r.x_lo, r.x_hi)} ({x}) vs "
        f"{ci_text(r.y_value, r.y_lo, r.y_hi)} ({y})",
        f"Welch p = {fmt(r.p_value, 2)}, Holm-adjusted p = {fmt(r.p_holm, 2)}",
        f"P({x} > {y}) = {ci_text(r.poi, r.poi_lo, r.poi_hi)}",
        f"seeds {r.n_x} vs {r.n_y}",
    ]
    reasons = []
    if r.status == "indicative":
        if not r.holm_reject:
            reasons.append(f"not significant after {significance.CORRECTION}")
        if min(r.n_x, r.n_y) < significance.MIN_SEEDS:
            reasons.append(f"fewer than {significance.MIN_SEEDS} seeds per group")
    tail = f" — {', '.join(reasons)}" if reasons else ""
    return f"- {head}: {'; '.join(parts)}{tail}."


def support_section(doc: Doc, a: Analysis) -> None:
    doc.add("## Which differences are statistically supported?\n")
    support = a.support
    if support.empty:
        doc.add("Supported (0): nothing to compare (fewer than two groups with results).\n")
        return
    metric_name = aggregate.METRIC_NAMES[a.metric]
    n_agg = int((support["scope"] == "aggregate").sum())
    m = len(support)
    doc.add(
        f"Comparisons made: **{m}** ({m - n_agg} per env, {n_agg} in aggregate): every pair of "
        "groups that differ in exactly one key (two labels at the same values of the extra sweep "
        "axes, or one label at two values of one axis), on each env and across envs. Test: "
        f"{significance.TEST_NAME} of the difference in means (per env: raw final scores; across "
        "envs: normalised final scores, mean over envs). Correction: "
        f"**{significance.CORRECTION}** over all {m} comparisons, family-wise "
        f"α = {significance.ALPHA}. A difference is *supported* when the corrected test rejects "
        f"it and each group has at least {significance.MIN_SEEDS} seeds (in every env tested); "
        f"*indicative* when p < {significance.ALPHA} before correction but it is not supported. "
        f"Effect sizes beside each pair: 95% CIs (per env: mean final score; across envs: "
        f"{metric_name} of normalised scores) and P(X > Y) with its CI.\n"
    )
    for status, title, empty in (
        ("supported", "Supported", "no difference is supported by these runs"),
        ("indicative", "Indicative", "none"),
        ("not significant", "Not significant", ""),
        ("untested", "Untested (fewer than 2 seeds on a side)", ""),
    ):
        part = support[support["status"] == status]
        if part.empty:
            if empty:
                doc.add(f"{title} (0): {empty}.\n")
            continue
        doc.add(f"{title} ({len(part)}):\n")
        doc.add("\n".join(_pair_line(r, metric_name) for r in part.itertuples()) + "\n")
    note = start_rule_note(a)
    if note:
        doc.add(f"**Start rules.** {note}\n")


def default_start_rule(label: str) -> str | None:
    """A variant's own running-average start (``variants.get(label).running_init``), else None."""
    import variants

    if label not in variants.names():
        return None
    rule = variants.get(label).running_init
    return f"{rule.kind}({rule.steps})" if rule.kind == "zeros-average" else rule.kind


def start_rule_note(a: Analysis) -> str:
    """What the shown label pairs mix: statistic and start rule (empty when nothing to say).

    When ``kfac.running_init`` is a sweep axis, a label at two start rules measures the start
    rule alone and two labels at one start rule the statistic alone; otherwise pairs of
    variants whose own start rules differ (``paper``: first batch, ``kfac-pytorch``: identity)
    mix the two, which ``runs/start-rules.toml`` separates.
    """
    if "kfac.running_init" in a.sweep.axes:
        return (
            "`kfac.running_init` is a sweep axis here: a pair of one label at two start rules "
            "measures the start rule alone, a pair of two labels at the same start rule the factor "
            "statistic alone."
        )
    fixed = (a.sweep.meta.get("spec") or {}).get("set") or {}
    if fixed.get("kfac.running_init", "variant") != "variant":
        return ""
    shown = a.support[a.support["status"].isin(["supported", "indicative"])]
    pairs = set()
    for r in shown.itertuples():
        x, y = a.labels.get(r.x, r.x), a.labels.get(r.y, r.y)
        rx, ry = default_start_rule(x), default_start_rule(y)
        if rx and ry and rx != ry:
            pairs.add((x, rx, y, ry))
    if not pairs:
        return ""
    items = "; ".join(f"{x} ({rx}) vs {y} ({ry})" for x, rx, y, ry in sorted(pairs))
    return (
        "These variants also differ in their running-average start rule, so the differences "
        f"between them listed above mix the factor statistic with the start rule: {items}. "
        "`runs/start-rules.toml` crosses `kfac.running_init` with the variant to separate the two "
        '(README "Start rules apart from statistics").'
    )


def kl_section(doc: Doc, a: Analysis) -> None:
    if a.kl_ratio.empty and not a.old_schema_runs:
        return
    doc.add("## KL of the applied step: measured vs predicted\n")
    doc.add(
        "Per logged update, `kl` is the measured policy KL(π_old‖π_new) of the step actually "
        "applied and `predicted_kl` its quadratic model ½ΔθᵀF̃Δθ over the policy parameters "
        "(momentum included; `kfac_bench/store.py` `UPDATE_COLUMNS`). A ratio of 1 means the "
        "trust region's model is exact; above 1 the step moved the policy more than predicted. "
        "Median of kl / predicted_kl over every logged update of the ok runs (pooled over "
        f"seeds), its inter-quartile range, and the median over each run's first "
        f"{curves.FIRST_UPDATES} logged updates.\n"
    )
    if not a.kl_ratio.empty:
        rows = [
            [
                r.env,
                r.group,
                r.runs,
                r.updates,
                f"{fmt(r.median)} [{fmt(r.q25)}, {fmt(r.q75)}]",
                fmt(r.median_first),
            ]
            for r in a.kl_ratio.itertuples()
        ]
        headers = ["env", "group", "runs", "updates", "median kl/predicted_kl [IQR]",
                   f"median, first {curves.FIRST_UPDATES} updates"]  # fmt: skip
        doc.add(md_table(headers, rows) + "\n")
    if a.old_schema_runs:
        doc.add(
            f"{len(a.old_schema_runs)} ok run(s) logged `predicted_kl` without "
            "`predicted_kl_total`: an older schema whose `predicted_kl` was the steady-state "
            "step's, not the applied step's, so their ratio is not computed.\n"
        )


def _fidelity_headline(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Whole-network rows against the true Fisher with single-batch factors, where logged."""
    rows, said = summary, []
    if "layer" in rows.columns and (rows["layer"] == "network").any():
        rows = rows[rows["layer"] == "network"]
    for key, preferred, text in (
        ("reference", "true-fisher", "against the true Fisher (exact expectation over actions)"),
        ("factors", "batch", "with factors from the measured batch alone"),
        ("fisher_type", "sampled", "K-FAC from the sampled Fisher pass"),
    ):
        if key in rows.columns and (rows[key] == preferred).any():
            rows = rows[rows[key] == preferred]
            said.append(text)
    return rows, (", " + ", ".join(said)) if said else ""


def fidelity_section(doc: Doc, a: Analysis) -> None:
    if a.fidelity is None or a.fidelity.empty:
        return
    doc.add("## Fisher fidelity\n")
    headline, which = _fidelity_headline(a.fidelity)
    doc.add(
        "Cosine similarity between each variant's preconditioned gradient and the exact damped "
        "natural gradient (F + λI)⁻¹g on the same batch (from `fidelity.csv`, whole-network rows "
        f"when present{which}), mean over the runs measured; 1 is a perfect match. The table "
        "below it has every reference and factor set.\n"
    )
    weighted = headline.assign(total=headline["cosine_mean"] * headline["n"])
    sums = weighted.groupby(["variant", "damping_mode"], sort=True)[["total", "n"]].sum()
    table = (sums["total"] / sums["n"].where(sums["n"] > 0)).unstack("damping_mode")
    headers = ["variant", *[f"damping_mode={c}" for c in table.columns]]
    rows = [[idx, *[fmt(v) for v in row]] for idx, row in table.iterrows()]
    doc.add(md_table(headers, rows) + "\n")
    keys = [k for k in ("layer", "reference", "factors", "fisher_type") if k in a.fidelity.columns]
    doc.add('<details markdown="1"><summary>Every row</summary>\n')
    rows = [
        [r["variant"], r["damping_mode"], *[r[k] for k in keys], fmt(r["cosine_mean"]),
         fmt(r["cosine_std"]), r["n"]]
        for _, r in a.fidelity.iterrows()
    ]  # fmt: skip
    headers = ["variant", "damping_mode", *keys, "mean cosine", "std", "n"]
    doc.add(md_table(headers, rows) + "\n")
    doc.add("</details>\n")
