"""Vectorised environments: the Step contract per family, seeding, raw episode returns."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from kfac_bench.config import AtariConfig
from kfac_bench.rl.envs import AtariVecEnv, EnvError, Step, check_env_id, make_env


def _balance(obs: np.ndarray) -> np.ndarray:
    """A linear controller that keeps CartPole up for the whole 500-step limit."""
    push_right = obs[:, 2] + 0.5 * obs[:, 3] + 0.01 * obs[:, 0] + 0.1 * obs[:, 1] > 0
    return push_right.astype(np.int64)


def _rollout(env_id: str, seed: int, steps: int, num_envs: int = 4) -> list[Step]:
    env = make_env(env_id, num_envs)
    first = env.reset(seed=seed)
    rng = np.random.default_rng(0)
    out = [Step(first, np.zeros(0), np.zeros(0), np.zeros(0), first)]
    for _ in range(steps):
        out.append(env.step(rng.integers(0, env.num_actions, num_envs)))
    env.close()
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def test_unknown_id_names_close_matches() -> None:
    with pytest.raises(EnvError, match="unknown environment id 'CartPol-v1'") as err:
        check_env_id("CartPol-v1")
    assert "CartPole-v1" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EnvError, match="unknown environment id"):
        make_env("NoSuchGame-v0", 2)


def test_bounded_box_actions_make_a_continuous_env() -> None:
    env = make_env("Pendulum-v1", 2)
    assert env.continuous and env.num_actions == 1
    np.testing.assert_array_equal(env.action_low, [-2.0])
    env.reset(seed=0)
    step = env.step(np.array([[5.0], [-5.0]]))  # clipped to the bounds, no error
    assert step.obs.shape == (2, 3)
    env.close()


def test_non_box_observation_space_is_rejected() -> None:
    with pytest.raises(EnvError, match="Discrete observation space"):
        check_env_id("FrozenLake-v1")


def test_supported_ids_pass() -> None:
    for env_id in ["CartPole-v1", "Acrobot-v1", "MinAtar/Breakout-v1", "ALE/Pong-v5"]:
        check_env_id(env_id)
    check_env_id("BreakoutNoFrameskip-v4")


# ---------------------------------------------------------------------------------------------
# CartPole (native vector env, same-step reset)


def test_cartpole_truncates_at_500() -> None:
    env = make_env("CartPole-v1", 3)
    assert (env.obs_shape, env.obs_dtype, env.num_actions) == ((4,), np.float32, 2)
    obs = env.reset(seed=0)
    for t in range(1, 501):
        step = env.step(_balance(obs))
        if t < 500:
            assert not (step.terminated.any() or step.truncated.any() or step.finished)
            assert step.final_obs is step.obs or np.array_equal(step.final_obs, step.obs)
        obs = step.obs
    assert step.truncated.all() and not step.terminated.any()
    assert [(e.env_index, e.ret, e.length) for e in step.finished] == [
        (i, 500.0, 500) for i in range(3)
    ]
    # The reset already happened: obs is a fresh start state, final_obs the 500th state.
    assert np.abs(step.obs).max() <= 0.05
    assert not np.allclose(step.final_obs, step.obs)
    assert step.reward.dtype == np.float32 and (step.reward == 1.0).all()
    # The episode counters restart: the next truncation is another 500 steps away.
    for _ in range(499):
        step = env.step(_balance(obs))
        obs = step.obs
        assert not step.truncated.any()


def test_cartpole_termination_resets_same_step() -> None:
    env = make_env("CartPole-v1", 4)
    env.reset(seed=1)
    lengths = np.zeros(4, dtype=int)
    seen: dict[int, int] = {}
    for _ in range(60):  # always pushing left topples the pole in well under 60 steps
        step = env.step(np.zeros(4, dtype=np.int64))
        lengths += 1
        done = step.terminated
        assert not step.truncated.any()
        if done.any():
            pole_or_cart_out = (np.abs(step.final_obs[done, 2]) > 12 * 2 * np.pi / 360) | (
                np.abs(step.final_obs[done, 0]) > 2.4
            )
            assert pole_or_cart_out.all()
            assert np.abs(step.obs[done]).max() <= 0.05
            np.testing.assert_array_equal(step.final_obs[~done], step.obs[~done])
            for ep in step.finished:
                assert ep.ret == ep.length == lengths[ep.env_index]
                seen.setdefault(ep.env_index, ep.length)
            lengths[done] = 0
    assert sorted(seen) == [0, 1, 2, 3]


def test_cartpole_same_seed_same_observations() -> None:
    a, b, c = (_rollout("CartPole-v1", s, 200) for s in (5, 5, 6))
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.obs, sb.obs)
        np.testing.assert_array_equal(sa.final_obs, sb.final_obs)
    assert not np.array_equal(a[0].obs, c[0].obs)


def test_cartpole_render_is_rgb() -> None:
    env = make_env("CartPole-v1", 2)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert (frame == 0).any() and (frame == 255).any()  # the cart and the background


# ---------------------------------------------------------------------------------------------
# Generic loop path


class _Counter(gym.Env):
    """obs = steps taken so far; reward = the action received (Discrete with start=1)."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2, start=1)

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):  # type: ignore[override]
        self.t += 1
        return np.array([self.t], np.float32), float(action), False, False, {}


def test_generic_truncation_final_obs_and_action_offset() -> None:
    env_id = "KfacBenchTestCounter-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_Counter, max_episode_steps=5)
    env = make_env(env_id, 2)
    assert (env.obs_shape, env.num_actions) == ((1,), 2)
    env.reset(seed=0)
    for _ in range(5):
        step = env.step(np.array([0, 1]))
        np.testing.assert_array_equal(step.reward, [1.0, 2.0])  # actions 0/1 -> 1/2
    assert step.truncated.all() and not step.terminated.any()
    np.testing.assert_array_equal(step.final_obs, [[5.0], [5.0]])
    np.testing.assert_array_equal(step.obs, [[0.0], [0.0]])
    assert [(e.env_index, e.ret, e.length) for e in step.finished] == [(0, 5.0, 5), (1, 10.0, 5)]


def test_generic_acrobot() -> None:
    env = make_env("Acrobot-v1", 2)
    assert (env.obs_shape, env.obs_dtype, env.num_actions) == ((6,), np.float32, 3)
    obs = env.reset(seed=0)
    assert obs.shape == (2, 6) and obs.dtype == np.float32
    rng = np.random.default_rng(0)
    returns = np.zeros(2)
    finished = []
    for _ in range(500):
        step = env.step(rng.integers(0, 3, 2))
        returns += step.reward
        for ep in step.finished:
            # -1 per step, 0 on the step that reaches the goal.
            assert ep.ret == returns[ep.env_index] == -ep.length + step.terminated[ep.env_index]
            returns[ep.env_index] = 0
        finished += step.finished
    assert finished  # random play hits the 500-step limit
    assert all(e.length <= 500 for e in finished)


def test_generic_same_seed_same_observations() -> None:
    a, b = (_rollout("Acrobot-v1", 3, 30, num_envs=2) for _ in range(2))
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.obs, sb.obs)


# ---------------------------------------------------------------------------------------------
# MinAtar


def test_minatar_observations_and_raw_returns() -> None:
    env = make_env("MinAtar/Breakout-v1", 8)
    assert (env.obs_shape, env.obs_dtype, env.num_actions) == ((4, 10, 10), np.float32, 3)
    obs = env.reset(seed=0)
    assert obs.shape == (8, 4, 10, 10) and obs.dtype == np.float32
    assert set(np.unique(obs)) <= {0.0, 1.0} and obs[:, 0].sum(axis=(1, 2)).min() >= 1  # paddle
    rng = np.random.default_rng(0)
    returns, lengths = np.zeros(8), np.zeros(8, dtype=int)
    finished = []
    for _ in range(300):
        step = env.step(rng.integers(0, env.num_actions, 8))
        returns += step.reward
        lengths += 1
        assert not step.truncated.any()
        for ep in step.finished:
            assert (ep.ret, ep.length) == (returns[ep.env_index], lengths[ep.env_index])
            assert step.terminated[ep.env_index]
            assert not np.array_equal(step.final_obs[ep.env_index], step.obs[ep.env_index])
        returns[step.terminated], lengths[step.terminated] = 0, 0
        finished += step.finished
    assert len(finished) >= 8 and any(e.ret > 0 for e in finished)
    frame = env.render()
    assert frame.shape == (100, 100, 3) and frame.dtype == np.uint8 and frame.any()


def test_minatar_same_seed_same_observations() -> None:
    a, b, c = (_rollout("MinAtar/Breakout-v1", s, 100) for s in (1, 1, 2))
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.obs, sb.obs)
    assert any(not np.array_equal(sa.obs, sc.obs) for sa, sc in zip(a, c))


# ---------------------------------------------------------------------------------------------
# Atari


@pytest.fixture(scope="module")
def space_invaders():
    """Training and evaluation envs stepped with the same seed and actions until 2 games end.

    Yields (training steps, evaluation steps, training env, lives before each step).

    Space Invaders scores 5-30 per hit, so clipping is visible; it has 3 lives.
    """
    train = make_env("ALE/SpaceInvaders-v5", 2, training=True)
    evaluate = make_env("ALE/SpaceInvaders-v5", 2, training=False)
    assert isinstance(train, AtariVecEnv)
    np.testing.assert_array_equal(train.reset(seed=3), evaluate.reset(seed=3))
    rng = np.random.default_rng(0)
    train_steps, eval_steps, lives = [], [], []
    games = 0
    while games < 2 and len(train_steps) < 2000:
        actions = rng.integers(0, train.num_actions, 2)
        lives.append(train.lives.copy())
        train_steps.append(train.step(actions))
        eval_steps.append(evaluate.step(actions))
        games += len(train_steps[-1].finished)
    yield train_steps, eval_steps, train, lives
    train.close()
    evaluate.close()


def test_atari_observations(space_invaders) -> None:
    train_steps, _, env, _ = space_invaders
    assert (env.obs_shape, env.obs_dtype, env.num_actions) == ((4, 84, 84), np.uint8, 6)
    assert env.game == "space_invaders"
    obs = train_steps[-1].obs
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and obs.max() > 0
    frame = env.render()
    assert frame.shape == (84, 84, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:, :, 0], obs[0, -1])


def test_atari_training_rewards_clipped_episode_returns_raw(space_invaders) -> None:
    train_steps, eval_steps, _, _ = space_invaders
    raw_sum = np.zeros(2)
    finished = 0
    for tr, ev in zip(train_steps, eval_steps):
        # Same game underneath: a life loss never resets the training env.
        np.testing.assert_array_equal(tr.obs, ev.obs)
        assert set(np.unique(tr.reward)) <= {-1.0, 0.0, 1.0}
        np.testing.assert_array_equal(tr.reward, np.sign(ev.reward))
        raw_sum += ev.reward
        assert [(e.env_index, e.ret, e.length) for e in tr.finished] == [
            (e.env_index, e.ret, e.length) for e in ev.finished
        ]
        for ep in tr.finished:
            assert ep.ret == raw_sum[ep.env_index]
            raw_sum[ep.env_index] = 0
            finished += 1
    assert finished >= 2
    assert max(float(s.reward.max()) for s in eval_steps) > 1.0  # raw scores are 5..30


def test_atari_life_loss_terminates_training_only(space_invaders) -> None:
    train_steps, eval_steps, _, lives = space_invaders
    life_losses = 0
    for t, (tr, ev) in enumerate(zip(train_steps, eval_steps)):
        game_over = np.zeros(2, dtype=bool)
        game_over[[e.env_index for e in tr.finished]] = True
        np.testing.assert_array_equal(ev.terminated | ev.truncated, game_over)  # eval: games only
        life_loss = tr.terminated & ~game_over
        if life_loss.any():
            after = train_steps[t + 1 :][:1]
            lost = np.flatnonzero(life_loss)
            life_losses += lost.size
            # Not reset: final_obs is obs, and lives went down by one with the game going on.
            np.testing.assert_array_equal(tr.final_obs[lost], tr.obs[lost])
            assert (lives[t][lost] > 1).all()
            if after:
                assert (lives[t + 1][lost] == lives[t][lost] - 1).all()
    assert life_losses >= 2


def test_atari_game_over_final_obs_differs(space_invaders) -> None:
    train_steps, _, _, _ = space_invaders
    ends = [(s, e.env_index) for s in train_steps for e in s.finished]
    assert ends
    for step, i in ends:
        assert step.terminated[i] and not step.truncated[i]
        assert not np.array_equal(step.final_obs[i], step.obs[i])


def test_atari_noframeskip_id_maps_to_rom() -> None:
    env = make_env("BreakoutNoFrameskip-v4", 1, atari=AtariConfig(noop_max=0))
    try:
        assert env.game == "breakout" and env.num_actions == 4
        a, b = env.reset(seed=0), env.reset(seed=0)
        np.testing.assert_array_equal(a, b)
    finally:
        env.close()
