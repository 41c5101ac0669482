"""Labels, groups and facets: what the analysis compares, and in which order it shows them.

A **label** is what ``config.label`` names a run: the variant for ACKTR runs, the algorithm
(``a2c``, ``ppo``) for the first-order controls (``kfac_bench/config.py``, ``Config.label``).
A **group** is a label plus its value on every extra sweep axis (``paper`` or
``paper [damping_mode=eigen]``); a **facet** is the axis values alone (``damping_mode=eigen``,
or ``all runs`` without axes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

#: Labels in their fixed display order: the five variants, then the first-order controls.
KNOWN_LABELS = ("paper", "baselines", "kfac-pytorch", "ikostrikov", "kfac-reduce", "a2c", "ppo")
#: The first-order controls (labels that log no K-FAC quantities).
CONTROLS = ("a2c", "ppo")


def _axis_short_names(axes: Sequence[str]) -> dict[str, str]:
    short = {a: a.rsplit(".", 1)[-1] for a in axes}
    if len(set(short.values())) < len(short):
        return {a: a for a in axes}
    return short


def group_name(label: str, axis_values: dict[str, Any]) -> str:
    """``label`` or ``label [axis=value, ...]`` (axis keys shortened to their last part)."""
    if not axis_values:
        return str(label)
    short = _axis_short_names(list(axis_values))
    inner = ", ".join(f"{short[a]}={v}" for a, v in axis_values.items())
    return f"{label} [{inner}]"


def facet_name(axis_values: dict[str, Any]) -> str:
    """``axis=value, ...`` for a facet title; ``"all runs"`` when there are no axes."""
    if not axis_values:
        return "all runs"
    short = _axis_short_names(list(axis_values))
    return ", ".join(f"{short[a]}={v}" for a, v in axis_values.items())


def label_order(labels: Iterable[str]) -> list[str]:
    """Known labels in :data:`KNOWN_LABELS` order, then the others alphabetically."""
    unique = list(dict.fromkeys(labels))
    known = [lab for lab in KNOWN_LABELS if lab in unique]
    return known + sorted(lab for lab in unique if lab not in KNOWN_LABELS)


def with_groups(frame: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Copy of ``frame`` with ``group`` and ``facet`` columns, sorted by label order then axes."""
    out = frame.copy()
    axes = list(axes)
    out["group"] = [
        group_name(row["label"], {a: row[a] for a in axes}) for _, row in out.iterrows()
    ]
    out["facet"] = [facet_name({a: row[a] for a in axes}) for _, row in out.iterrows()]
    order = {lab: i for i, lab in enumerate(label_order(out["label"]))}
    out["_order"] = out["label"].map(order)
    out = out.sort_values(["_order", *axes], kind="stable").drop(columns="_order")
    return out.reset_index(drop=True)


def group_order(frame: pd.DataFrame) -> list[str]:
    """Groups in display order (``frame`` must come from :func:`with_groups`)."""
    return list(dict.fromkeys(frame["group"]))
