"""Per-run metrics against hand-computed values (analysis/metrics.py, analysis/references.py)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import metrics, references


def test_rolling_mean_is_trailing_with_short_start():
    out = metrics.rolling_mean([1, 2, 3, 4, 5], window=3)
    # [1], [1,2], [1,2,3], [2,3,4], [3,4,5]
    np.testing.assert_allclose(out, [1.0, 1.5, 2.0, 3.0, 4.0])


def test_rolling_mean_min_periods_marks_nan():
    out = metrics.rolling_mean([2, 4, 6, 8], window=2, min_periods=2)
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:], [3.0, 5.0, 7.0])


def test_interpolate_curve_on_common_grid():
    x = [10, 20, 40]
    y = [1.0, 3.0, 7.0]
    grid = [5, 10, 15, 30, 40, 50, 60]
    out = metrics.interpolate_curve(x, y, grid, x_end=50)
    # before first point: NaN; linear inside; held to x_end=50; NaN after
    expected = [np.nan, 1.0, 2.0, 5.0, 7.0, 7.0, np.nan]
    np.testing.assert_allclose(out, expected)


def test_interpolate_curve_repeated_steps_use_last_value():
    # two episodes end at step 20: the curve value at 20 is the later one (3.0)
    out = metrics.interpolate_curve([10, 20, 20, 30], [1.0, 2.0, 3.0, 5.0], [20, 25])
    np.testing.assert_allclose(out, [3.0, 4.0])


def test_interpolate_curve_without_points_is_nan():
    assert np.isnan(metrics.interpolate_curve([], [], [1, 2])).all()


def test_final_score_uses_last_ten_percent_of_budget():
    steps = np.arange(10, 1001, 10)  # 100 episodes, budget 1000
    returns = steps / 10.0  # return == episode index + 1
    score = metrics.final_score(steps, returns, budget=1000)
    # episodes with step >= 900: steps 900..1000 -> returns 90..100, mean 95
    assert score.value == pytest.approx(95.0)
    assert score.n_episodes == 11
    assert score.rule == "last 10% of steps"


def test_final_score_falls_back_to_last_100_episodes():
    # 150 episodes, only 3 end in the last 10% of a 10_000-step budget
    steps = np.concatenate([np.arange(1, 148), [9500, 9600, 9700]]).astype(float)
    returns = np.arange(150, dtype=float)
    score = metrics.final_score(steps, returns, budget=10_000)
    assert score.rule == "last 100 episodes"
    assert score.n_episodes == 100
    assert score.value == pytest.approx(np.mean(np.arange(50, 150)))  # 99.5


def test_final_score_without_episodes_is_nan():
    assert np.isnan(metrics.final_score([], [], budget=100).value)


def test_normalised_auc_of_linear_curve_is_its_mean_height():
    grid = np.array([0.0, 50.0, 100.0])
    curve = np.array([0.0, 5.0, 10.0])
    # trapezoid area 500 over span 100
    assert metrics.normalised_auc(grid, curve) == pytest.approx(5.0)


def test_normalised_auc_backfills_before_first_episode():
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    curve = np.array([np.nan, 2.0, 2.0, 4.0])
    # curve becomes [2, 2, 2, 4]: area 2 + 2 + 3 = 7 over span 3
    assert metrics.normalised_auc(grid, curve) == pytest.approx(7.0 / 3.0)


def test_steps_to_threshold_first_crossing_of_smoothed_curve():
    steps = [100, 200, 300, 400, 500]
    smoothed = [np.nan, 10.0, 40.0, 60.0, 55.0]
    assert metrics.steps_to_threshold(steps, smoothed, 50.0) == 400.0
    assert metrics.steps_to_threshold(steps, smoothed, 40.0) == 300.0
    assert np.isnan(metrics.steps_to_threshold(steps, smoothed, 61.0))
    assert np.isnan(metrics.steps_to_threshold(steps, smoothed, float("nan")))


def test_steps_to_threshold_with_rolling_mean_window():
    returns = np.array([0, 0, 100, 100, 100, 100], dtype=float)
    steps = np.arange(1, 7) * 10.0
    smoothed = metrics.rolling_mean(returns, window=4, min_periods=4)
    # windows ending at episodes 4,5,6: means 50, 75, 100 -> 75 first reached at step 50
    assert metrics.steps_to_threshold(steps, smoothed, 75.0) == 50.0


def test_steps_per_second():
    assert metrics.steps_per_second(10_000, 8.0) == 1250.0
    assert np.isnan(metrics.steps_per_second(10_000, 0.0))
    assert np.isnan(metrics.steps_per_second(float("nan"), 3.0))


def test_normalise_min_max():
    np.testing.assert_allclose(metrics.normalise([22.0, 261.0, 500.0], 22.0, 500.0), [0, 0.5, 1])
    assert np.isnan(metrics.normalise([1.0], 2.0, 2.0)).all()


def test_reference_lookup_and_cartpole_normalisation():
    cart = references.reference_for("CartPole-v1")
    assert cart is not None and cart.best == 500.0
    assert cart.random == pytest.approx(22.2)
    acro = references.reference_for("Acrobot-v1")
    assert acro is not None and acro.best == -60.0
    for env in ("ALE/Breakout-v5", "BreakoutNoFrameskip-v4"):
        ref = references.reference_for(env)
        assert ref is not None and (ref.random, ref.best) == (1.7, 31.8)
    pong = references.reference_for("PongNoFrameskip-v4")
    assert pong is not None and (pong.random, pong.best) == (-20.7, 9.3)
    minatar = references.reference_for("MinAtar/Breakout-v1")
    assert minatar is not None and minatar.best is None and minatar.random is not None
    assert references.reference_for("NoSuchEnv-v0") is None
    # human-normalised Pong: a score of 9.3 is human level
    assert metrics.normalise(9.3, pong.random, pong.best) == pytest.approx(1.0)


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "Pendulum-v1"])
def test_continuous_random_references_are_the_measurement_they_say(env_id):
    """The table's random score is what its recipe gives: 100 episodes of action_space.sample()
    (action seed 0), reset seeds 0…99 (rounded to 0.1 as in the table)."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(0)
    returns = []
    for episode in range(100):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    ref = references.reference_for(env_id)
    assert ref is not None and ref.random == pytest.approx(np.mean(returns), abs=0.05)
    hopper = references.reference_for("Hopper-v5")
    assert hopper is not None and hopper.best is None and hopper.random == 16.7
