"""Loading sweep directories into tidy tables (analysis/load.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import load


def test_parse_run_name_with_axes():
    parsed = load.parse_run_name("kfac-pytorch__CartPole-v1__s3__kfac.damping_mode-tikhonov-pi")
    assert parsed == {
        "label": "kfac-pytorch",
        "env": "CartPole-v1",
        "seed": 3,
        "axes": {"kfac.damping_mode": "tikhonov-pi"},
    }
    assert load.parse_run_name("odd")["label"] == "odd"


def test_complete_sweep_tables(make_sweep):
    sweep = load.load_sweep(make_sweep())
    assert len(sweep.runs) == 3 * 2 * 3
    assert sweep.runs["ok"].all()
    assert set(sweep.runs["label"]) == {"paper", "baselines", "a2c"}
    assert set(sweep.runs["env"]) == {"CartPole-v1", "Acrobot-v1"}
    assert sweep.axes == ()
    # tidy: identity columns on every episode/update row
    for column in ("run", "label", "env", "seed", "step", "wall_time", "return", "length"):
        assert column in sweep.episodes.columns
    assert len(sweep.episodes) == 18 * 200
    assert {"kl", "predicted_kl", "nu", "lr", "diag/trunk.0/A_trace"} <= set(sweep.updates)
    a2c = sweep.updates[sweep.updates["label"] == "a2c"]
    assert a2c["kl"].isna().all() and a2c["lr"].notna().all()
    assert sweep.runs["git_commit"].eq("0123456789abcdef0123").all()
    assert (sweep.runs["budget"] == 10_000).all()


def test_failed_and_unfinished_runs_are_kept_and_flagged(make_sweep):
    sweep = load.load_sweep(make_sweep(problems=True))
    runs = sweep.runs.set_index("run")
    assert len(runs) == 18 + 4
    failed = runs.loc["paper__CartPole-v1__s99"]
    assert failed["state"] == "failed" and not failed["ok"]
    assert failed["error"] == "RuntimeError: factor inverse failed"  # first line only
    assert "failed" in failed["issue"]
    assert failed["n_episodes"] == 60  # its partial episodes are still loaded
    running = runs.loc["baselines__CartPole-v1__s98"]
    assert running["state"] == "running" and not running["ok"]
    assert "unfinished" in running["issue"] and running["steps"] == 4000
    empty = runs.loc["a2c__CartPole-v1__s97"]
    assert not empty["ok"] and "episodes.csv missing" in empty["issue"]
    assert empty["label"] == "a2c" and empty["seed"] == 97
    ghost = runs.loc["a2c__CartPole-v1__s96"]
    assert ghost["state"] == "pending" and "no run directory" in ghost["issue"]
    assert runs["ok"].sum() == 18
    assert set(sweep.episodes["run"]) >= {"paper__CartPole-v1__s99"}


def test_extra_axis_becomes_a_column(make_sweep):
    sweep = load.load_sweep(
        make_sweep(
            labels=("paper",),
            envs=("CartPole-v1",),
            axis=("kfac.damping_mode", ["eigen", "tikhonov"]),
        )
    )
    assert sweep.axes == ("kfac.damping_mode",)
    assert sorted(sweep.runs["kfac.damping_mode"].unique()) == ["eigen", "tikhonov"]
    assert "kfac.damping_mode" in sweep.episodes.columns
    assert "kfac.damping_mode" in sweep.updates.columns


def test_sweep_thresholds_and_fidelity(make_sweep):
    sweep = load.load_sweep(make_sweep(thresholds={"CartPole-v1": 300.0}, fidelity=True))
    assert sweep.thresholds == {"CartPole-v1": 300.0}
    assert sweep.fidelity is not None
    assert {"variant", "damping_mode", "layer", "cosine", "run"} <= set(sweep.fidelity.columns)


def test_without_sweep_json_and_with_torn_csv_line(make_sweep):
    root = make_sweep(write_sweep_json=False)
    run_dir = sorted(p for p in root.iterdir() if p.is_dir())[0]
    with open(run_dir / "episodes.csv", "a") as handle:
        handle.write("10050,10.0")  # a write killed half way
    sweep = load.load_sweep(root)
    assert sweep.name == root.name and len(sweep.runs) == 18
    eps = sweep.episodes[sweep.episodes["run"] == run_dir.name]
    assert len(eps) == 200 and np.isfinite(eps["return"]).all()  # torn row dropped


def test_unreadable_status_is_flagged(make_sweep):
    root = make_sweep(labels=("paper",), envs=("CartPole-v1",), seeds=(0,))
    run_dir = next(p for p in root.iterdir() if p.is_dir())
    (run_dir / "status.json").write_text('{"state": "do')
    sweep = load.load_sweep(root)
    row = sweep.runs.iloc[0]
    assert not row["ok"] and "status.json unreadable" in row["issue"]


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs directory not found"):
        load.load_sweep(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs"):
        load.load_sweep(tmp_path / "empty")
    (tmp_path / "only_report" / "report").mkdir(parents=True)
    (tmp_path / "only_report" / "sweep.json").write_text(json.dumps({"name": "x", "runs": []}))
    with pytest.raises(ValueError, match="no runs"):
        load.load_sweep(tmp_path / "only_report")
