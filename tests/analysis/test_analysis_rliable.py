"""Cross-check analysis/aggregate.py against rliable (Agarwal et al. 2021) where importable.

``rliable.metrics`` needs only numpy/scipy; ``rliable.library`` (bootstrap CIs, performance
profiles) also imports ``arch``, which may fail to import with some pandas versions — those
tests are skipped then, with the import error as the reason.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pytest

from analysis import aggregate


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as error:  # ImportError, or arch failing on import (TypeError)
        pytest.skip(f"{name} not importable: {type(error).__name__}: {error}")


@pytest.fixture(scope="module")
def score_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2021)
    return {
        "a": rng.normal(0.6, 0.2, size=(7, 4)),
        "b": rng.normal(0.5, 0.3, size=(7, 4)),
        "c": np.round(rng.uniform(0, 1, size=(5, 4)), 1),  # ties
    }


def test_point_estimates_match_rliable_metrics(score_dict):
    metrics = _import("rliable.metrics")
    for scores in score_dict.values():
        assert aggregate.aggregate_iqm(scores) == pytest.approx(metrics.aggregate_iqm(scores))
        assert aggregate.aggregate_mean(scores) == pytest.approx(metrics.aggregate_mean(scores))
        assert aggregate.aggregate_median(scores) == pytest.approx(metrics.aggregate_median(scores))
        assert aggregate.optimality_gap(scores) == pytest.approx(
            metrics.aggregate_optimality_gap(scores)
        )


def test_probability_of_improvement_matches_rliable(score_dict):
    metrics = _import("rliable.metrics")
    for x in score_dict.values():
        for y in score_dict.values():
            assert aggregate.probability_of_improvement(x, y) == pytest.approx(
                metrics.probability_of_improvement(x, y)
            )
    # rliable's documented tie case: identical arrays give 0.5
    x = np.array([[1.0, 2.0], [2.0, 2.0], [1.0, 1.0], [2.0, 1.0]])
    assert aggregate.probability_of_improvement(x, x) == pytest.approx(
        metrics.probability_of_improvement(x, x)
    )


def test_interval_estimates_close_to_rliable(score_dict):
    library = _import("rliable.library")
    metrics = _import("rliable.metrics")
    reps = 3000
    points, cis = library.get_interval_estimates(
        score_dict,
        lambda s: np.array([metrics.aggregate_iqm(s)]),
        reps=reps,
        random_state=np.random.RandomState(0),
    )
    ours = aggregate.interval_estimates(score_dict, aggregate.aggregate_iqm, reps, seed=0)
    for label, (lo, hi) in ((k, v[:, 0]) for k, v in cis.items()):
        assert ours[label].point == pytest.approx(float(points[label][0]))
        width = hi - lo
        # different random streams: endpoints agree to a fraction of the CI width
        assert ours[label].lo == pytest.approx(lo, abs=0.15 * width)
        assert ours[label].hi == pytest.approx(hi, abs=0.15 * width)


def test_performance_profile_matches_rliable(score_dict):
    library = _import("rliable.library")
    taus = np.linspace(-0.5, 1.5, 21)
    profiles, _ = library.create_performance_profile(score_dict, taus, reps=50)
    ours = aggregate.performance_profiles(score_dict, taus, reps=50)
    for label, profile in profiles.items():
        np.testing.assert_allclose(ours[label][0], profile)
