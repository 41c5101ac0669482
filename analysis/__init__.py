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

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["analyze"]


def analyze(
    runs_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    metric: str = "iqm",
    n_bootstrap: int = 2000,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Analyse a sweep directory; write ``<out>/report.md`` (+ html, figures, CSV); return it.

    See :func:`analysis.report.analyze`.
    """
    from analysis.report import analyze as _analyze

    return _analyze(runs_dir, out=out, metric=metric, n_bootstrap=n_bootstrap, seed=seed, log=log)
