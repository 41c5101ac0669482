"""Which differences the report calls supported: Welch tests, Holm's correction, the seed rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_synthetic import build_sweep
from scipy import stats

from analysis import analyze, normalise, significance


def test_holm_hand_example():
    # m = 4, α = 0.05. Sorted: 0.005 ≤ 0.05/4 reject; 0.01 ≤ 0.05/3 reject;
    # 0.03 > 0.05/2 stop — 0.03 and 0.04 are kept although 0.04 ≤ 0.05/1.
    p = [0.01, 0.04, 0.03, 0.005]
    assert significance.holm(p) == [True, False, False, True]
    # adjusted: 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06
    np.testing.assert_allclose(significance.holm_adjusted(p), [0.03, 0.06, 0.06, 0.02])
    # a NaN (untested pair) counts in m but is never rejected: with it (m = 3) 0.03 > 0.05/2,
    # without it (m = 2) 0.03 ≤ 0.05/1
    assert significance.holm([0.03, np.nan, 0.001]) == [False, False, True]
    assert significance.holm([0.03, 0.001]) == [True, True]


def test_holm_matches_an_explicit_step_down_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 0.1, size=m) ** rng.uniform(0.5, 2)
        order = sorted(range(m), key=lambda i: p[i])
        expected = [False] * m
        for k, i in enumerate(order):  # Holm 1979: reject while p_(k) ≤ α / (m − k)
            if p[i] > 0.05 / (m - k):
                break
            expected[i] = True
        assert significance.holm(p) == expected
        adjusted = significance.holm_adjusted(p)
        assert [a <= 0.05 for a in adjusted] == expected


def test_welch_one_stratum_is_scipys_welch_t_test():
    rng = np.random.default_rng(1)
    x, y = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 2.0, 5)
    result = significance.welch_test([x], [y])
    reference = stats.ttest_ind(x, y, equal_var=False)
    assert result.t == pytest.approx(reference.statistic)
    assert result.p == pytest.approx(reference.pvalue)
    assert (result.n_x, result.n_y, result.strata) == (7, 5, 1)


def test_welch_stratified_by_hand():
    x = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 12.0])]
    y = [np.array([0.0, 1.0]), np.array([8.0, 9.0, 13.0])]
    v = [1.0 / 3, 0.5 / 2, 2.0 / 2, 7.0 / 3]  # s²/n for x₁, y₁, x₂, y₂
    diff = ((2.0 - 0.5) + (11.0 - 10.0)) / 2
    se = np.sqrt(sum(v)) / 2
    df = sum(v) ** 2 / (v[0] ** 2 / 2 + v[1] ** 2 / 1 + v[2] ** 2 / 1 + v[3] ** 2 / 2)
    result = significance.welch_test(x, y)
    assert result.diff == pytest.approx(diff) and result.se == pytest.approx(se)
    assert result.df == pytest.approx(df)
    assert result.p == pytest.approx(2 * stats.t.sf(diff / se, df))
    assert (result.n_x, result.n_y) == (2, 2)


def test_classify_needs_holm_and_five_seeds():
    p = [1e-6, 1e-6, 0.03, 0.5, np.nan]
    reject, status = significance.classify(p, n_x=[5, 4, 9, 9, 9], n_y=[6, 9, 9, 9, 9])
    assert reject == [True, True, False, False, False]
    assert status == ["supported", "indicative", "indicative", "not significant", "untested"]


def _support_counts(report: Path) -> tuple[int, pd.DataFrame]:
    support = pd.read_csv(report.parent / "support.csv")
    line = next(ln for ln in report.read_text().splitlines() if ln.startswith("Supported ("))
    return int(line[len("Supported (") : line.index(")")]), support


@pytest.mark.parametrize("n_seeds, expect_supported", [(3, False), (6, True)])
def test_same_gap_is_supported_with_six_seeds_not_three(tmp_path, n_seeds, expect_supported):
    root = build_sweep(
        tmp_path / f"s{n_seeds}", labels=("paper", "baselines"), envs=("CartPole-v1",),
        seeds=tuple(range(n_seeds)),
    )  # fmt: skip
    count, support = _support_counts(analyze(root, n_bootstrap=100, seed=0))
    assert count == int(support["supported"].sum())
    paper_vs_baselines = support[(support["scope"] == "CartPole-v1")].iloc[0]
    assert paper_vs_baselines["p_holm"] < 1e-3  # the gap (0.9 vs 0.6 of the range) is large
    if expect_supported:
        assert count >= 1 and paper_vs_baselines["status"] == "supported"
        assert paper_vs_baselines["better"] == "paper"
    else:
        assert count == 0 and paper_vs_baselines["status"] == "indicative"


def test_report_states_comparisons_and_correction(tmp_path):
    root = build_sweep(tmp_path / "s", labels=("paper", "baselines", "a2c"), seeds=range(5))
    report = analyze(root, n_bootstrap=100, seed=0)
    text = report.read_text()
    support = pd.read_csv(report.parent / "support.csv")
    # 3 pairs × 2 envs + 3 aggregate pairs, one family
    assert len(support) == 9
    assert "Comparisons made: **9**" in text and "Holm–Bonferroni" in text
    np.testing.assert_allclose(support["p_holm"], significance.holm_adjusted(support["p_value"]))


def test_below_random_best_is_never_normalised_to_one():
    # MinAtar Breakout: random 0.41 (analysis/references.py), no best-known score
    row = normalise.env_bounds("MinAtar/Breakout-v1", np.array([0.05, 0.197, np.nan]))
    assert row["usable"] is False and np.isnan(row["high"])
    assert "0.197" in row["note"] and "0.41" in row["note"]
    good = normalise.env_bounds("MinAtar/Breakout-v1", np.array([0.2, 3.0]))
    assert good["usable"] is True and (good["low"], good["high"]) == (0.41, 3.0)
    assert good["high_source"] == normalise.OBSERVED_MAX


def test_analysis_of_an_env_whose_best_is_below_random(tmp_path, monkeypatch):
    import analysis_synthetic

    # synthetic MinAtar returns between 0 and 0.3: every run is below random (0.41)
    monkeypatch.setitem(analysis_synthetic.ENV_RANGE, "MinAtar/Breakout-v1", (0.0, 0.3))
    root = build_sweep(
        tmp_path / "s", labels=("paper", "baselines"), envs=("CartPole-v1", "MinAtar/Breakout-v1"),
        seeds=range(3),
    )  # fmt: skip
    report = analyze(root, n_bootstrap=100, seed=0)
    runs = pd.read_csv(report.parent / "runs.csv")
    minatar = runs[runs["env"] == "MinAtar/Breakout-v1"]
    assert minatar["final_score"].max() < 0.41
    assert minatar["normalised"].isna().all()
    assert runs.loc[runs["env"] == "CartPole-v1", "normalised"].between(0, 1).all()
    bounds = pd.read_csv(report.parent / "normalisation.csv").set_index("env")
    assert not bounds.loc["MinAtar/Breakout-v1", "usable"]
    assert "not normalised" in report.read_text()


def test_runs_with_unreadable_config_are_excluded_and_listed(tmp_path):
    root = build_sweep(tmp_path / "s", labels=("paper", "baselines"), envs=("CartPole-v1",),
                       seeds=range(5))  # fmt: skip
    broken = root / "paper__CartPole-v1__s4"
    (broken / "config.json").write_text('{"label": "pap')
    report = analyze(root, n_bootstrap=100, seed=0)
    runs = pd.read_csv(report.parent / "runs.csv").set_index("run")
    assert not runs.loc["paper__CartPole-v1__s4", "ok"]
    assert "config.json unreadable" in runs.loc["paper__CartPole-v1__s4", "issue"]
    text = report.read_text()
    assert "`paper__CartPole-v1__s4`" in text and "config.json unreadable" in text
    support = pd.read_csv(report.parent / "support.csv")
    assert support.iloc[0]["n_x"] == 4  # the broken run is not in the test


def test_report_says_when_a_difference_mixes_statistic_and_start_rule(tmp_path):
    root = build_sweep(tmp_path / "s", labels=("paper", "kfac-pytorch", "a2c"),
                       envs=("CartPole-v1",), seeds=range(3))  # fmt: skip
    text = analyze(root, n_bootstrap=50, seed=0).read_text()
    assert "**Start rules.**" in text
    assert "paper (first) vs kfac-pytorch (identity)" in text
    assert "a2c (" not in text  # the controls have no start rule


def test_no_start_rule_note_between_variants_with_the_same_start(tmp_path):
    root = build_sweep(tmp_path / "s", labels=("paper", "kfac-reduce"), envs=("CartPole-v1",),
                       seeds=range(3))  # fmt: skip
    assert "**Start rules.**" not in analyze(root, n_bootstrap=50, seed=0).read_text()


def test_start_rule_axis_note(tmp_path):
    root = build_sweep(tmp_path / "s", labels=("paper", "kfac-pytorch"), envs=("CartPole-v1",),
                       seeds=range(3), axis=("kfac.running_init", ["first", "identity"]))  # fmt: skip
    text = analyze(root, n_bootstrap=50, seed=0).read_text()
    assert "`kfac.running_init` is a sweep axis here" in text
