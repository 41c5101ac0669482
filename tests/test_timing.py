"""The phase clock (kfac_bench/timing.py) and the time_* columns it gives updates.csv."""

from __future__ import annotations

import csv
import time

import pytest

from kfac_bench import timing
from kfac_bench.presets import build_config
from kfac_bench.rl.trainer import train


def test_phase_clock_sums_per_phase_synchronises_and_restarts():
    clock = timing.PhaseClock()
    calls = []
    clock.start(True, synchronize=lambda: calls.append(1))
    with clock.phase("env"):
        time.sleep(0.02)
    with clock.phase("env"):
        time.sleep(0.01)
    with clock.phase("update"), clock.phase("stats"):
        time.sleep(0.01)
    row = clock.take()
    assert set(row) == set(timing.COLUMNS)
    assert row["time_env"] >= 0.03 and row["time_act"] == 0.0
    assert row["time_update"] >= row["time_stats"] >= 0.01
    assert len(calls) == 8  # before and after each of the four phases
    assert clock.take()["time_env"] == 0.0  # take restarts the totals
    clock.start(False)
    with clock.phase("env"):
        pass
    assert clock.take() == dict.fromkeys(timing.COLUMNS)


def rows(run_dir):
    return list(csv.DictReader((run_dir / "updates.csv").open()))


@pytest.mark.parametrize(
    ("env", "preset", "steps"),
    [("CartPole-v1", "openai-baselines", 3000), ("Pendulum-v1", "mujoco-tuned", 7500)],
    ids=["shared-kfac", "separate-kfac-critic"],
)
def test_time_columns_nest_and_fit_in_each_rows_interval(tmp_path, env, preset, steps):
    overrides = {"log.update_every": 1} if env == "CartPole-v1" else {}
    config = build_config(env, preset=preset, total_steps=steps, overrides=overrides)
    train(config, tmp_path / "run")
    previous_wall = 0.0
    for row in rows(tmp_path / "run"):
        t = {name: float(row[f"time_{name}"]) for name in timing.PHASES}
        assert all(v >= 0.0 for v in t.values())
        assert t["stats"] <= t["fisher"] + 1e-6  # the statistics run inside the Fisher pass
        inner = t["fisher"] + t["inverse"] + t["precondition"] + t["critic"]
        assert inner <= t["update"] + 1e-6
        outer = t["act"] + t["env"] + t["returns"] + t["update"]
        wall = float(row["wall_time"])
        assert outer <= wall - previous_wall + 2e-3  # wall_time is rounded to 1 ms
        previous_wall = wall
        assert t["env"] > 0.0 and t["update"] > 0.0
    if env == "Pendulum-v1":
        assert float(rows(tmp_path / "run")[-1]["time_critic"]) > 0.0


def test_phase_times_off_leaves_the_columns_empty(tmp_path):
    config = build_config("CartPole-v1", total_steps=1000, overrides={"log.phase_times": False})
    train(config, tmp_path / "run")
    for row in rows(tmp_path / "run"):
        assert all(row[column] == "" for column in timing.COLUMNS)
