"""The whole pipeline on synthetic sweeps: report, figures, CSV tables and their numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_synthetic import build_sweep, write_run

from analysis import analyze
from analysis import cli as analysis_cli
from analysis.compute import compute
from analysis.load import load_sweep
from analysis.markdown import fmt

REPS = 100
LABELS = ("paper", "baselines", "a2c")
ENVS = ("CartPole-v1", "Acrobot-v1")


@pytest.fixture(scope="module")
def main_report(tmp_path_factory) -> Path:
    """3 labels × 2 envs × 3 seeds + a failed, an unfinished, an empty and a missing run, a
    sweep threshold for CartPole and a fidelity.csv."""
    root = build_sweep(
        tmp_path_factory.mktemp("sweeps") / "main",
        labels=LABELS,
        envs=ENVS,
        problems=True,
        thresholds={"CartPole-v1": 300.0},
        fidelity=True,
    )
    return analyze(root, n_bootstrap=REPS, seed=0)


@pytest.fixture(scope="module")
def axis_report(tmp_path_factory) -> Path:
    root = build_sweep(
        tmp_path_factory.mktemp("sweeps") / "axis",
        labels=("paper", "a2c"),
        envs=("CartPole-v1",),
        seeds=(0, 1, 2),
        axis=("kfac.damping_mode", ["eigen", "tikhonov"]),
    )
    return analyze(root, n_bootstrap=REPS, seed=0, metric="mean")


def _hand_final(run_dir: Path) -> float:
    """The documented rule computed directly: episodes ending in the last 10% of 10k steps."""
    eps = pd.read_csv(run_dir / "episodes.csv")
    return float(eps.loc[eps["step"] >= 9_000, "return"].mean())


def _hand_steps_to(run_dir: Path, threshold: float) -> float:
    eps = pd.read_csv(run_dir / "episodes.csv")
    smoothed = eps["return"].rolling(100, min_periods=10).mean()
    hit = eps.loc[smoothed >= threshold, "step"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def test_report_files_and_figures(main_report: Path):
    out = main_report.parent
    assert main_report == out / "report.md" and out.name == "report"
    figures = [
        "final_scores",
        "aggregate",
        "performance_profiles",
        "probability_of_improvement",
        "curves_steps_cartpole-v1",
        "curves_steps_acrobot-v1",
        "curves_wallclock_cartpole-v1",
        "curves_wallclock_acrobot-v1",
        "diagnostics_cartpole-v1",
        "diagnostics_acrobot-v1",
        "factors_cartpole-v1",
        "factors_acrobot-v1",
    ]
    for name in figures:
        for ext in ("png", "svg"):
            path = out / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    for csv in ("runs", "results", "aggregate", "poi", "support", "normalisation", "curves"):
        assert (out / f"{csv}.csv").is_file()
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert (main_report.stat().st_mode & 0o777) == 0o644
    text = main_report.read_text()
    for name in figures:
        assert f"(figures/{name}.png)" in text
    # every figure has a caption line saying what is plotted
    assert text.count("*Figure ") == len(figures)
    assert "bootstrap" in text.split("*Figure 2.")[1].split("\n")[0]


def test_report_final_scores_equal_the_synthetic_data(main_report: Path):
    root = main_report.parent.parent
    results = pd.read_csv(main_report.parent / "results.csv")
    text = main_report.read_text()
    for env in ENVS:
        for label in LABELS:
            runs = [root / f"{label}__{env}__s{seed}" for seed in (0, 1, 2)]
            expected = float(np.mean([_hand_final(r) for r in runs]))
            row = results[(results["env"] == env) & (results["group"] == label)].iloc[0]
            assert row["final_mean"] == pytest.approx(expected, rel=1e-9)
            assert row["n"] == 3
            assert row["final_lo"] <= row["final_mean"] <= row["final_hi"]
            # the report's table shows the same number
            assert f"| {label} | 3" in text
            assert fmt(expected) in text


def test_report_steps_to_threshold_and_flags(main_report: Path):
    root = main_report.parent.parent
    results = pd.read_csv(main_report.parent / "results.csv").set_index(["env", "group"])
    paper = [root / f"paper__CartPole-v1__s{s}" for s in (0, 1, 2)]
    hand = [_hand_steps_to(r, 300.0) for r in paper]
    assert all(np.isfinite(hand))
    row = results.loc[("CartPole-v1", "paper")]
    assert row["threshold"] == 300.0  # from sweep.json, not gymnasium's 475
    assert row["steps_to_threshold"] == pytest.approx(np.median(hand))
    assert row["reached"] == 3
    assert results.loc[("CartPole-v1", "a2c"), "reached"] == 0
    # Acrobot has no sweep threshold: gymnasium's spec (-100) when gymnasium is installed
    # excluded runs per group on CartPole: paper 1 failed, baselines 1 running, a2c 2
    assert results.loc[("CartPole-v1", "paper"), "excluded"] == 1
    assert results.loc[("CartPole-v1", "a2c"), "excluded"] == 2
    runs = pd.read_csv(main_report.parent / "runs.csv")
    assert len(runs) == 22 and runs["ok"].sum() == 18
    text = main_report.read_text()
    assert "RuntimeError: factor inverse failed" in text
    assert "`baselines__CartPole-v1__s98` | running" in text
    assert "`a2c__CartPole-v1__s96` | pending" in text
    assert "steps/s" in text and "0123456789ab" in text and "torch 2.13.0" in text


def test_report_throughput_and_aggregate(main_report: Path):
    results = pd.read_csv(main_report.parent / "results.csv").set_index(["env", "group"])
    # synthetic runs: 10_000 steps at FPS paper 1000, baselines 800, a2c 2000
    assert results.loc[("CartPole-v1", "paper"), "steps_per_s"] == pytest.approx(1000.0)
    assert results.loc[("Acrobot-v1", "a2c"), "steps_per_s"] == pytest.approx(2000.0)
    agg = pd.read_csv(main_report.parent / "aggregate.csv")
    iqm = agg[agg["metric"] == "iqm"].set_index("group")["point"]
    assert iqm["paper"] > iqm["baselines"] > iqm["a2c"]
    # normalisation with the reference table: CartPole (x − 22.2)/(500 − 22.2)
    runs = pd.read_csv(main_report.parent / "runs.csv")
    row = runs[runs["run"] == "paper__CartPole-v1__s0"].iloc[0]
    assert row["normalised"] == pytest.approx((row["final_score"] - 22.2) / (500 - 22.2))
    support = pd.read_csv(main_report.parent / "support.csv")
    agg_rows = support[support["scope"] == "aggregate"]
    # 3 seeds per group: clear gaps, but below the 5-seed rule, so indicative, never supported
    assert len(agg_rows) == 3 and (agg_rows["status"] == "indicative").all()
    assert not support["supported"].any()
    text = main_report.read_text()
    assert "Supported (0):" in text and "Indicative (9):" in text
    assert "paper > a2c across envs" in text


def test_report_html_is_self_contained(main_report: Path):
    html = (main_report.parent / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("data:image/png;base64,") == 12
    assert 'src="figures/' not in html
    assert "<table>" in html


def test_fidelity_section(main_report: Path):
    text = main_report.read_text()
    assert "## Fisher fidelity" in text
    fidelity = pd.read_csv(main_report.parent / "fidelity.csv")
    row = fidelity[
        (fidelity["variant"] == "paper")
        & (fidelity["damping_mode"] == "eigen")
        & (fidelity["layer"] == "pi")
    ].iloc[0]
    assert row["cosine_mean"] == pytest.approx(0.94)
    # variant × damping_mode table: paper/eigen is the mean of its two layers (0.9, 0.94)
    assert "| variant | damping_mode=eigen | damping_mode=tikhonov |" in text
    assert "| paper | 0.92 | 0.82 |" in text


def test_faceted_report_for_an_extra_axis(axis_report: Path):
    out = axis_report.parent
    for name in ("axis_kfac-damping-mode", "aggregate", "final_scores"):
        assert (out / "figures" / f"{name}.png").is_file()
    results = pd.read_csv(out / "results.csv")
    assert "kfac.damping_mode" in results.columns
    assert set(results["group"]) == {
        "paper [damping_mode=eigen]",
        "paper [damping_mode=tikhonov]",
        "a2c [damping_mode=eigen]",
        "a2c [damping_mode=tikhonov]",
    }
    poi = pd.read_csv(out / "poi.csv")
    # compared: two labels at one axis value, or one label at two axis values — not both
    env_rows = poi[poi["scope"] == "CartPole-v1"]
    pairs = set(zip(env_rows["x"], env_rows["y"]))
    assert pairs == {
        ("paper [damping_mode=eigen]", "paper [damping_mode=tikhonov]"),
        ("paper [damping_mode=eigen]", "a2c [damping_mode=eigen]"),
        ("paper [damping_mode=tikhonov]", "a2c [damping_mode=tikhonov]"),
        ("a2c [damping_mode=eigen]", "a2c [damping_mode=tikhonov]"),
    }
    text = axis_report.read_text()
    assert "Extra axis `kfac.damping_mode`: eigen, tikhonov" in text
    assert "Mean over seeds" in text or "Mean" in text


def test_same_seed_same_numbers(tmp_path: Path):
    root = build_sweep(
        tmp_path / "s", labels=("paper", "a2c"), envs=("CartPole-v1", "Acrobot-v1"), seeds=(0, 1)
    )
    sweep = load_sweep(root)
    a = compute(sweep, reps=50, seed=3)
    b = compute(sweep, reps=50, seed=3)
    c = compute(sweep, reps=50, seed=4)
    for name in ("results", "aggregates", "poi", "curves_step"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.aggregates["lo"].equals(c.aggregates["lo"])


def test_all_runs_failed_still_reports(tmp_path: Path):
    root = tmp_path / "bad"
    write_run(root, "paper", "CartPole-v1", 0, state="failed", stop_at=0, error="boom")
    report = analyze(root, n_bootstrap=20)
    text = report.read_text()
    assert "boom" in text and "no results to show" in text


def test_cli_analyze(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    from kfac_bench import cli

    root = build_sweep(tmp_path / "s", labels=("paper", "a2c"), envs=("CartPole-v1",), seeds=(0, 1))
    out = tmp_path / "elsewhere"
    rc = cli.main(["analyze", str(root), "--out", str(out), "--bootstrap", "30", "--seed", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"loading 4 runs from {root}" in printed
    assert "writing figure aggregate" in printed
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    rc = cli.main(["analyze", str(tmp_path / "missing")])
    assert rc == 2
    assert "kfac-bench: error: runs directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["analyze", str(tmp_path / "empty")]) == 2
    assert "no runs in" in capsys.readouterr().err


def test_cli_module_contract():
    import argparse

    parser = argparse.ArgumentParser()
    analysis_cli.add_arguments(parser)
    args = parser.parse_args(["runs/x", "--metric", "median", "--bootstrap", "10"])
    assert args.metric == "median" and args.bootstrap == 10 and args.out is None
    assert args.seed == 0 and str(args.runs_dir) == "runs/x"
    with pytest.raises(SystemExit):
        parser.parse_args(["runs/x", "--metric", "max"])


def test_fidelity_references_and_factor_sets_are_kept_apart(tmp_path: Path):
    root = build_sweep(tmp_path / "fid", labels=("paper",), envs=("CartPole-v1",), seeds=(0, 1))
    lines = ["variant,damping_mode,layer,reference,factors,cosine"]
    for reference, base in (("true-fisher", 0.3), ("sampled-fisher", 0.6)):
        for factors, off in (("batch", 0.0), ("running-10", -0.2)):
            lines.append(f"paper,eigen,network,{reference},{factors},{base + off:.2f}")
            lines.append(f"paper,eigen,pi,{reference},{factors},0.99")
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first / "fidelity.csv").write_text("\n".join(lines) + "\n")
    report = analyze(root, n_bootstrap=REPS, seed=0)
    text = report.read_text()
    # headline: network rows against the true Fisher with batch factors only (0.3), never the
    # average over references and factor sets (0.4) or over layers
    assert "against the true Fisher" in text and "| paper | 0.3 |" in text
    summary = compute(load_sweep(root), reps=REPS).fidelity
    assert len(summary) == 8 and set(summary["n"]) == {1}
    assert "| paper | eigen | network | sampled-fisher | running-10 | 0.4 |" in text


def test_equal_wall_clock_table(main_report: Path):
    # synthetic runs: 10_000 steps at 1000 (paper), 800 (baselines), 2000 (a2c) steps/s, so the
    # fastest group's median finish is t* = 5 s, when paper has done 5000 steps, baselines 4000
    table = pd.read_csv(main_report.parent / "equal_time.csv")
    cart = table[table["env"] == "CartPole-v1"].set_index("group")
    assert (table["seconds"] == 5.0).all()
    assert cart.loc["paper", "steps"] == 5000 and cart.loc["baselines", "steps"] == 4000
    assert cart.loc["a2c", "steps"] == 10_000
    # paper at 5 s: the trailing mean of 20 episodes ending at step 5000 of a return rising as
    # 22 + 478·0.9·1.5·step/10_000 (+ seed noise): episodes at steps 4050..5000, mean step 4525
    assert cart.loc["paper", "point"] == pytest.approx(22 + 478 * 0.9 * 1.5 * 0.4525, abs=6)
    assert "### At equal wall-clock time" in main_report.read_text()
