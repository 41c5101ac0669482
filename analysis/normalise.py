"""Per-environment reward thresholds and min–max normalisation bounds, with their sources.

The normalised score is ``(final − low) / (high − low)`` (:func:`analysis.metrics.normalise`):
``low`` is the env's random score and ``high`` its best-known score from
:mod:`analysis.references`. A bound the table lacks falls back to what the sweep observed:

* no random score → ``low`` = the lowest ok final score of the env ("observed min");
* no best-known score → ``high`` = the highest ok final score ("observed max"), **but only when
  it is above the random reference**. When even the sweep's best run is at or below random,
  there is no scale on which it could be called 1: the env is not normalised (``high`` is NaN,
  ``usable`` False), its normalised scores are NaN, it is left out of the normalised aggregates
  and the report says why. Its raw final scores are still compared per env.

Every row states which reference each bound is (``low_source`` / ``high_source``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.references import reference_for

BOUND_COLUMNS = ["env", "low", "high", "low_source", "high_source", "reference", "usable", "note"]
RANDOM_REF = "random score (analysis/references.py)"
BEST_REF = "best-known score (analysis/references.py)"
OBSERVED_MIN = "observed min final score in this sweep"
OBSERVED_MAX = "observed max final score in this sweep"


def env_threshold(env: str, overrides: dict[str, float]) -> tuple[float, str]:
    """Reward threshold for ``env`` and where it came from.

    ``sweep.json`` ``thresholds`` first, else ``gymnasium.spec(env).reward_threshold``; NaN
    (source ``"none"``) when neither has one.
    """
    if env in overrides:
        return float(overrides[env]), "sweep.json"
    try:
        import gymnasium

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = gymnasium.spec(env).reward_threshold
    except Exception:  # unregistered ids (MinAtar/ALE before registration) or no gymnasium
        value = None
    if value is None:
        return float("nan"), "none"
    return float(value), "gymnasium spec"


def env_bounds(env: str, finals: np.ndarray) -> dict[str, object]:
    """One row of :func:`normalisation_bounds` for ``env`` given its ok runs' final scores."""
    finals = finals[np.isfinite(finals)]
    ref = reference_for(env)
    low = ref.random if ref is not None else None
    high = ref.best if ref is not None else None
    row: dict[str, object] = {
        "env": env,
        "low_source": RANDOM_REF if low is not None else f"{OBSERVED_MIN} (no random reference)",
        "high_source": BEST_REF if high is not None else OBSERVED_MAX,
        "reference": ref.source if ref is not None else "not in analysis/references.py",
        "usable": True,
        "note": "",
    }
    if low is None:
        low = float(finals.min()) if finals.size else float("nan")
    if high is None:
        observed = float(finals.max()) if finals.size else float("nan")
        if ref is not None and ref.random is not None and np.isfinite(observed):
            if observed <= ref.random:
                row["high_source"] = f"none: observed max {observed:.4g} ≤ random {ref.random:.4g}"
                row["note"] = (
                    f"no run beats the random reference ({observed:.4g} ≤ {ref.random:.4g}) and "
                    "there is no best-known score, so scores are not normalised; the env is left "
                    "out of the normalised aggregates"
                )
                row["usable"] = False
                observed = float("nan")
        high = observed
    if row["usable"] and not (np.isfinite(low) and np.isfinite(high) and high > low):
        row["usable"] = False
        row["note"] = row["note"] or "bounds undefined or equal: scores are not normalised"
    row["low"], row["high"] = float(low), float(high)
    return row


def normalisation_bounds(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per-env ``low, high`` for min–max normalisation, their sources and whether usable.

    ``per_run`` needs ``env, ok, final_score``. Columns: :data:`BOUND_COLUMNS`.
    """
    rows = [
        env_bounds(str(env), frame.loc[frame["ok"], "final_score"].to_numpy(dtype=float))
        for env, frame in per_run.groupby("env", sort=True)
    ]
    return pd.DataFrame(rows, columns=BOUND_COLUMNS)
