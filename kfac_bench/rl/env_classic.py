"""Classic control, MuJoCo and any other Box-observation id: CartPole's native numpy vector env
with a same-step reset, and a plain loop over ``gym.make`` instances for everything else
(Discrete or bounded Box actions)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from kfac_bench.rl.env_registry import env_spec
from kfac_bench.rl.vec_env import EnvError, Step, VecEnv, as_actions, as_box_actions

# ---------------------------------------------------------------------------------------------
# CartPole: gymnasium's numpy vector env, same-step reset


def native_cartpole(env_id: str, num_envs: int) -> Any | None:
    """gymnasium's ``CartPoleVectorEnv`` for ``env_id`` when the registry provides it."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    if env_spec(env_id).vector_entry_point is None:
        return None
    try:
        vec = gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point")
    except Exception:  # an id whose native vector env needs arguments we do not pass
        return None
    inner = vec.unwrapped
    if isinstance(inner, CartPoleVectorEnv) and all(
        hasattr(inner, a) for a in ("state", "steps", "prev_done", "low", "high")
    ):
        return inner
    vec.close()
    return None


class CartPoleVecEnv(VecEnv):
    """CartPole on gymnasium's ``CartPoleVectorEnv``; ends reset on the same step.

    The native env seeds one generator for all N envs (``reset(seed)``), so env ``i`` is not
    seeded with ``seed + i`` here; runs are still fully determined by ``seed``.
    """

    def __init__(self, env_id: str, native: Any) -> None:
        super().__init__(env_id, native.num_envs)
        self._env = native
        self.obs_shape = tuple(native.single_observation_space.shape)
        self.obs_dtype = np.dtype(np.float32)
        self.num_actions = int(native.single_action_space.n)
        self.max_episode_steps = int(native.max_episode_steps)

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self._env.reset(seed=seed)
        self._episodes.reset()
        return obs.astype(np.float32, copy=False)

    def step(self, actions: np.ndarray) -> Step:
        env = self._env
        obs, reward, terminated, truncated, _ = env.step(as_actions(actions, self.num_envs))
        reward = reward.astype(np.float32, copy=False)
        done = terminated | truncated
        finished = self._episodes.add(reward, done)
        final_obs = obs
        if finished:
            # The reset the native env would do at the start of the next step, done now.
            idx = np.flatnonzero(done)
            final_obs = obs.copy()
            env.state[:, idx] = env.np_random.uniform(
                low=env.low, high=env.high, size=(4, idx.size)
            )
            env.steps[idx] = 0
            env.prev_done[idx] = False
            obs[idx] = env.state[:, idx].T
        return Step(obs, reward, terminated, truncated & ~terminated, final_obs, finished)

    def render(self) -> np.ndarray:
        if self._env.state is None:
            raise EnvError("render() before reset()")
        x, _, theta, _ = (float(v) for v in self._env.state[:, 0])
        return _draw_cartpole(x, theta, self._env.x_threshold, self._env.length)

    def close(self) -> None:
        self._env.close()


def _draw_cartpole(x: float, theta: float, x_threshold: float, half_pole: float) -> np.ndarray:
    """A 200×300 RGB drawing of cart position ``x`` and pole angle ``theta`` (numpy only)."""
    height, width = 200, 300
    scale = width / (2 * x_threshold)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    ground = 150  # image row of the track
    img[ground, :] = 0
    cx = x * scale + width / 2
    cart_w, cart_h = 30, 16
    top, left = ground - cart_h, round(cx - cart_w / 2)
    img[top:ground, max(left, 0) : max(left + cart_w, 0)] = 0
    # Pole: the pixels within half its width of the segment from the pivot to its tip.
    px, py = cx, float(top)
    length = 2 * half_pole * scale
    tx, ty = px + length * np.sin(theta), py - length * np.cos(theta)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = tx - px, ty - py
    t = np.clip(((cols - px) * dx + (rows - py) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    dist2 = (cols - px - t * dx) ** 2 + (rows - py - t * dy) ** 2
    img[dist2 <= 3.0**2] = (202, 152, 101)
    return img


# ---------------------------------------------------------------------------------------------
# Generic: a loop over gym.make instances


class GymLoopVecEnv(VecEnv):
    """Any Box-observation id with Discrete or bounded Box actions: N ``gym.make`` envs stepped
    in a Python loop. Box actions are clipped to the bounds here (SB3 ``OnPolicyAlgorithm``,
    CleanRL ``ppo_continuous_action.py``: the policy keeps its unclipped sample)."""

    def __init__(self, env_id: str, num_envs: int, *, render: bool = False) -> None:
        super().__init__(env_id, num_envs)
        self._envs = [
            # render_mode only where asked: not every env accepts the keyword.
            gym.make(
                env_id,
                disable_env_checker=True,
                **({"render_mode": "rgb_array"} if i == 0 and render else {}),
            )
            for i in range(num_envs)
        ]
        space = self._envs[0].observation_space
        self.obs_shape = tuple(space.shape)
        self.obs_dtype = np.dtype(np.float32)
        action_space = self._envs[0].action_space
        self.continuous = isinstance(action_space, gym.spaces.Box)
        if self.continuous:
            self.num_actions = int(action_space.shape[0])
            self.action_low = action_space.low.astype(np.float32)
            self.action_high = action_space.high.astype(np.float32)
            self._action_start = 0
        else:
            self.num_actions = int(action_space.n)
            self._action_start = int(action_space.start)
        self._render = render

    def reset(self, seed: int) -> np.ndarray:
        obs = np.empty((self.num_envs, *self.obs_shape), dtype=np.float32)
        for i, env in enumerate(self._envs):
            obs[i], _ = env.reset(seed=seed + i)
        self._episodes.reset()
        return obs

    def step(self, actions: np.ndarray) -> Step:
        if self.continuous:
            actions = as_box_actions(actions, self.num_envs, self.action_low, self.action_high)
        else:
            actions = as_actions(actions, self.num_envs) + self._action_start
        n = self.num_envs
        obs = np.empty((n, *self.obs_shape), dtype=np.float32)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final: dict[int, Any] = {}
        for i, env in enumerate(self._envs):
            o, r, term, trunc, _ = env.step(actions[i] if self.continuous else int(actions[i]))
            reward[i], terminated[i], truncated[i] = r, term, trunc
            if term or trunc:
                final[i] = o
                o, _ = env.reset()
            obs[i] = o
        final_obs = obs
        if final:
            final_obs = obs.copy()
            for i, o in final.items():
                final_obs[i] = o
        finished = self._episodes.add(reward, terminated | truncated)
        return Step(obs, reward, terminated, truncated & ~terminated, final_obs, finished)

    def render(self) -> np.ndarray:
        if not self._render:
            raise EnvError(
                f"{self.env_id}: create the env with make_env(..., render=True) to render"
            )
        try:
            frame = self._envs[0].render()
        except gym.error.DependencyNotInstalled as exc:
            raise EnvError(
                f"{self.env_id}: rendering needs pygame (gymnasium[classic-control])"
            ) from exc
        except Exception as exc:  # MuJoCo without an OpenGL context (no display, no EGL/OSMesa)
            raise EnvError(
                f"{self.env_id}: cannot render ({type(exc).__name__}: {exc}); MuJoCo renders "
                "offscreen with MUJOCO_GL=egl (GPU driver) or MUJOCO_GL=osmesa (libosmesa6)"
            ) from exc
        if frame is None:
            raise EnvError(f"{self.env_id}: the environment rendered no frame")
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        for env in self._envs:
            env.close()
