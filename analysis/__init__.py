"""kfac-bench analysis: sweep directory → tidy tables → statistics → figures → report.

Modules (small, pure functions; DESIGN.md §6):

* :mod:`analysis.load` — run directories → tidy ``runs`` / ``episodes`` / ``updates`` tables;
* :mod:`analysis.metrics` — per-run metrics (final score, AUC, steps to threshold, ...);
* :mod:`analysis.aggregate` — IQM / mean / median, stratified bootstrap CIs, performance
  profiles, probability of improvement over ``{label: array(runs × tasks)}``;
* :mod:`analysis.references` — random / best-known scores for normalisation, with sources;
* :mod:`analysis.tables` — the sweep-level tables built from the above;
* :mod:`analysis.plots` — figures (take and return ``ax`` / ``fig``);
* :mod:`analysis.report` — the whole pipeline and ``report.md`` / ``report.html``;
* :mod:`analysis.cli` — ``kfac-bench analyze``.

The heavy imports (pandas, matplotlib) happen on first use, so importing the package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["analyze"]


def __getattr__(name: str) -> Any:
    """``analysis.analyze`` is :func:`analysis.report.analyze`, imported on first use."""
    if name == "analyze":
        from analysis.report import analyze

        return analyze
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
