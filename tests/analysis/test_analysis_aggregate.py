"""Aggregate statistics against hand-computed values (analysis/aggregate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import aggregate


def test_iqm_of_known_data():
    # 8 values: trim floor(8/4)=2 from each end -> mean(3,4,5,6) = 4.5
    assert aggregate.iqm(np.arange(1, 9)) == pytest.approx(4.5)
    # 10 values: trim 2 from each end -> mean(3..8) = 5.5; the outlier is ignored
    assert aggregate.iqm([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000]) == pytest.approx(5.5)


def test_iqm_ignores_nan_and_works_along_an_axis():
    x = np.array([[1, 2, 3, 4, np.nan], [10, 20, 30, 40, 50]], dtype=float)
    # row 0: 4 values, trim 1 -> mean(2,3)=2.5; row 1: 5 values, trim 1 -> mean(20,30,40)=30
    np.testing.assert_allclose(aggregate.iqm(x, axis=-1), [2.5, 30.0])
    assert np.isnan(aggregate.iqm([np.nan, np.nan]))


def test_aggregate_mean_median_iqm_of_runs_by_tasks():
    scores = np.array([[0.0, 1.0, 10.0], [2.0, 3.0, 20.0]])  # 2 runs x 3 tasks
    # per-task means 1, 2, 15
    assert aggregate.aggregate_mean(scores) == pytest.approx(6.0)
    assert aggregate.aggregate_median(scores) == pytest.approx(2.0)
    # pooled 6 values [0,1,2,3,10,20]: trim 1 each end -> mean(1,2,3,10) = 4
    assert aggregate.aggregate_iqm(scores) == pytest.approx(4.0)
    assert aggregate.optimality_gap(np.array([[0.5, 2.0]])) == pytest.approx(1 - 0.75)


def test_aggregates_with_nan_padded_task():
    # task 1 has one run less: its column is padded with NaN at the bottom
    scores = np.array([[1.0, 4.0], [3.0, np.nan]])
    assert aggregate.aggregate_mean(scores) == pytest.approx((2.0 + 4.0) / 2)
    # 3 values [1, 3, 4]: trim floor(3/4)=0 -> plain mean 8/3
    assert aggregate.aggregate_iqm(scores) == pytest.approx(8.0 / 3.0)


def test_stratified_resample_keeps_tasks_and_counts():
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, np.nan]])
    boot = aggregate.stratified_resample(scores, 500, np.random.default_rng(0))
    assert boot.shape == (500, 3, 2)
    assert set(np.unique(boot[:, :, 0])) <= {1.0, 2.0, 3.0}  # runs never cross tasks
    assert set(np.unique(boot[:, :2, 1])) <= {10.0, 20.0}
    assert np.isnan(boot[:, 2, 1]).all()  # the padding stays padding
    assert set(np.unique(boot[:, :, 0])) == {1.0, 2.0, 3.0}


def test_stratified_resample_rejects_interior_nan():
    with pytest.raises(ValueError, match="padding"):
        aggregate.stratified_resample(np.array([[np.nan], [1.0]]), 2, np.random.default_rng(0))


def test_bootstrap_ci_is_seeded_and_reproducible():
    scores = np.random.default_rng(1).normal(size=(10, 3))
    a = aggregate.interval_estimates({"x": scores}, aggregate.aggregate_iqm, 300, seed=7)
    b = aggregate.interval_estimates({"x": scores}, aggregate.aggregate_iqm, 300, seed=7)
    c = aggregate.interval_estimates({"x": scores}, aggregate.aggregate_iqm, 300, seed=8)
    assert a == b
    assert a["x"].lo != c["x"].lo
    assert a["x"].lo <= a["x"].point <= a["x"].hi
    # a label's CI does not depend on which other labels are analysed
    d = aggregate.interval_estimates(
        {"y": scores + 1, "x": scores}, aggregate.aggregate_iqm, 300, seed=7
    )
    assert d["x"] == a["x"]


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    """Percentile stratified bootstrap of the mean: ~95% coverage over repeated experiments."""
    rng = np.random.default_rng(123)
    true_task_means = np.array([0.0, 5.0])
    trials, hits = 300, 0
    for _ in range(trials):
        scores = rng.normal(true_task_means, [1.0, 2.0], size=(25, 2))
        _, lo, hi = aggregate.bootstrap_ci(scores, aggregate.aggregate_mean, 400, rng=rng)
        hits += lo <= true_task_means.mean() <= hi
    coverage = hits / trials
    assert 0.88 <= coverage <= 0.99, coverage


def test_probability_of_improvement_hand_cases():
    # one task: X=[0,0,3] vs Y=[1,1,1]: only x=3 wins, 3 of 9 pairs -> 1/3
    x = np.array([[0.0], [0.0], [3.0]])
    y = np.array([[1.0], [1.0], [1.0]])
    assert aggregate.probability_of_improvement(x, y) == pytest.approx(1 / 3)
    assert aggregate.probability_of_improvement(y, x) == pytest.approx(2 / 3)
    # ties count one half: X=[1,2,3] vs Y=[2,2,2]: 0 + 3*0.5 + 3 = 4.5 of 9 -> 1/2
    assert aggregate.probability_of_improvement(
        np.array([[1.0], [2.0], [3.0]]), np.full((3, 1), 2.0)
    ) == pytest.approx(0.5)
    # two tasks, 4 runs each (16 pairs per task).
    # Task 0: X=[1,2,1,2] vs Y=[2,2,2,2]: each x=2 ties 4 y's (2 runs * 4 * 1/2 = 4) -> 4/16.
    # Task 1: X=[2,2,1,1] vs Y=[1,1,1,1]: each x=2 beats 4 y's (8), each x=1 ties 4 (4)
    # -> 12/16. Mean over tasks: (1/4 + 3/4) / 2 = 1/2.
    x = np.array([[1.0, 2.0], [2.0, 2.0], [1.0, 1.0], [2.0, 1.0]])
    y = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    assert aggregate.probability_of_improvement(x, y) == pytest.approx(0.5)
    # different run counts: X=[2] vs Y=[1,3] on one task -> 1/2; vs Y=[1,1,3] -> 2/3
    assert aggregate.probability_of_improvement([[2.0]], [[1.0], [3.0]]) == pytest.approx(0.5)
    assert aggregate.probability_of_improvement([[2.0]], [[1.0], [1.0], [3.0]]) == pytest.approx(
        2 / 3
    )


def test_probability_of_improvement_is_complementary():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(5, 3)).astype(float)
    y = rng.integers(0, 4, size=(6, 3)).astype(float)
    total = aggregate.probability_of_improvement(x, y) + aggregate.probability_of_improvement(y, x)
    assert total == pytest.approx(1.0)


def test_poi_interval_and_pairwise_table():
    x = np.array([[3.0, 30.0], [4.0, 40.0], [5.0, 50.0]])
    y = x - 100.0  # every run of y is below every run of x on both tasks
    est = aggregate.poi_interval(x, y, 200, rng=np.random.default_rng(0))
    assert (est.point, est.lo, est.hi) == (1.0, 1.0, 1.0)
    table = aggregate.pairwise_poi({"x": x, "y": y, "z": x.copy()}, reps=200, seed=0)
    assert list(zip(table["x"], table["y"])) == [("x", "y"), ("x", "z"), ("y", "z")]
    row = table.set_index(["x", "y"]).loc[("x", "z")]
    assert row["p"] == pytest.approx(0.5)
    assert row["lo"] < 0.5 < row["hi"] and not row["supported"]
    assert table.set_index(["x", "y"]).loc[("x", "y"), "supported"]


def test_performance_profile_hand_case():
    scores = np.array([[0.0, 0.5], [1.0, 2.0]])  # 4 pooled scores
    profile = aggregate.performance_profile(scores, [-1.0, 0.0, 0.5, 1.0, 2.0])
    # fraction of scores strictly above tau
    np.testing.assert_allclose(profile, [1.0, 0.75, 0.5, 0.25, 0.0])
    result = aggregate.performance_profiles({"a": scores}, [0.0, 0.5], reps=100)
    point, lo, hi = result["a"]
    np.testing.assert_allclose(point, [0.75, 0.5])
    assert (lo <= point).all() and (point <= hi).all()


def test_curve_interval_aggregates_runs_per_point():
    curves = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan], [5.0, 6.0, 7.0]])
    point, lo, hi = aggregate.curve_interval(curves, "mean", reps=200)
    np.testing.assert_allclose(point[:2], [3.0, 4.0])
    assert np.isnan(point[2])  # only 1 of 3 runs has data: below half coverage
    assert (lo[:2] <= point[:2]).all() and (point[:2] <= hi[:2]).all()
    median, _, _ = aggregate.curve_interval(curves, "median", reps=10)
    np.testing.assert_allclose(median[:2], [3.0, 4.0])
