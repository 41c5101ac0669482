"""MinAtar (Young & Tian 2019): a loop over the games' ``minatar.Environment`` objects with
channels-first float32 observations and MinAtar's own protocol (sticky actions 0.1, ramping)."""

from __future__ import annotations

import colorsys

import gymnasium as gym
import numpy as np

from kfac_bench.rl.env_registry import env_spec
from kfac_bench.rl.vec_env import EnvError, Step, VecEnv, as_actions

# ---------------------------------------------------------------------------------------------
# MinAtar


class MinAtarVecEnv(VecEnv):
    """MinAtar games (``MinAtar/<Game>-v1``): channels-first float32 (C, 10, 10) observations."""

    def __init__(self, env_id: str, num_envs: int) -> None:
        super().__init__(env_id, num_envs)
        spec = env_spec(env_id)
        self._wrappers = [
            gym.make(env_id, disable_env_checker=True).unwrapped for _ in range(num_envs)
        ]
        self._games = [w.game for w in self._wrappers]  # minatar.Environment
        self._action_set = np.asarray(self._wrappers[0].action_set, dtype=np.int64)
        h, w, c = self._wrappers[0].observation_space.shape
        self.obs_shape = (c, h, w)
        self.obs_dtype = np.dtype(np.float32)
        self.num_actions = len(self._action_set)
        self.max_episode_steps = spec.max_episode_steps  # None for the registered ids
        self._palette = _palette(c)
        self._last_state: np.ndarray | None = None

    def _obs(self, states: np.ndarray) -> np.ndarray:
        self._last_state = states[0]
        return np.ascontiguousarray(states.transpose(0, 3, 1, 2), dtype=np.float32)

    def reset(self, seed: int) -> np.ndarray:
        states = np.stack([w.reset(seed=seed + i)[0] for i, w in enumerate(self._wrappers)])
        self._episodes.reset()
        return self._obs(states)

    def step(self, actions: np.ndarray) -> Step:
        game_actions = self._action_set[as_actions(actions, self.num_envs)]
        n = self.num_envs
        states = np.empty((n, *self.obs_shape[1:], self.obs_shape[0]), dtype=bool)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        final_states: dict[int, np.ndarray] = {}
        for i, game in enumerate(self._games):
            reward[i], terminated[i] = game.act(int(game_actions[i]))
            if terminated[i]:
                final_states[i] = np.array(game.state(), dtype=bool)
                game.reset()
            states[i] = game.state()
        truncated = np.zeros(n, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = (self._episodes.lengths + 1 >= self.max_episode_steps) & ~terminated
            for i in np.flatnonzero(truncated):
                final_states[int(i)] = states[i].copy()
                self._games[i].reset()
                states[i] = self._games[i].state()
        obs = self._obs(states)
        final_obs = obs
        if final_states:
            final_obs = obs.copy()
            for i, s in final_states.items():
                final_obs[i] = s.transpose(2, 0, 1)
        finished = self._episodes.add(reward, terminated | truncated)
        return Step(obs, reward, terminated, truncated, final_obs, finished)

    def render(self) -> np.ndarray:
        if self._last_state is None:
            raise EnvError("render() before reset()")
        state = self._last_state  # (10, 10, C) bool
        # Colour of the highest-numbered channel set at each cell; 0 (black) where none is.
        index = np.max(state * np.arange(1, state.shape[-1] + 1), axis=-1)
        img = self._palette[index]
        return np.repeat(np.repeat(img, 10, axis=0), 10, axis=1)


def _palette(channels: int) -> np.ndarray:
    """(channels + 1, 3) uint8: black, then evenly spaced bright hues."""
    colours = [(0, 0, 0)]
    for k in range(channels):
        r, g, b = colorsys.hsv_to_rgb(k / channels, 0.75, 1.0)
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return np.asarray(colours, dtype=np.uint8)
