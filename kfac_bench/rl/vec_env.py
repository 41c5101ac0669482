"""The vectorised-environment interface every family implements (DESIGN.md §4).

:class:`VecEnv` steps N copies of one environment together with *same-step* autoreset and
returns a :class:`Step`; finished games are tracked here as :class:`Episode` records (raw
returns, never from wrappers), so every family logs the same way. The families live in
``env_classic``, ``env_minatar`` and ``env_atari``; :func:`kfac_bench.rl.envs.make_env` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class EnvError(ValueError):
    """A bad environment id or an unsupported environment. The message is one line."""


@dataclass
class Episode:
    """One finished full game: raw (unclipped) return and its length in agent steps."""

    env_index: int
    ret: float
    length: int


@dataclass
class Step:
    """One vectorised transition; arrays have leading dimension ``num_envs`` (N).

    ``terminated`` is the training terminal (a life loss counts on Atari with episodic life);
    ``truncated`` is a time-limit end and is never set together with ``terminated``.
    ``final_obs`` equals ``obs`` except where ``terminated | truncated`` and the env was reset.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    finished: list[Episode] = field(default_factory=list)


class _EpisodeTracker:
    """Raw per-env return and length of the game in progress."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def add(self, raw_reward: np.ndarray, game_over: np.ndarray) -> list[Episode]:
        """Accumulate one step; return the games that ``game_over`` ends and zero them."""
        self.returns += raw_reward
        self.lengths += 1
        if not game_over.any():
            return []
        idx = np.flatnonzero(game_over)
        done = [Episode(int(i), float(self.returns[i]), int(self.lengths[i])) for i in idx]
        self.returns[idx] = 0.0
        self.lengths[idx] = 0
        return done


class VecEnv(ABC):
    """N copies of one environment, stepped together, reset on the same step they end.

    Discrete actions: ``num_actions`` choices, actions (N,) int. Continuous (``continuous``):
    ``num_actions`` action dimensions with bounds ``action_low``/``action_high`` (A,), actions
    (N, A) float, clipped to the bounds by the env before stepping (:func:`as_box_actions`); the
    trainer keeps the unclipped ones for the policy."""

    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    env_id: str
    continuous: bool = False
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    def __init__(self, env_id: str, num_envs: int) -> None:
        if num_envs < 1:
            raise EnvError(f"num_envs must be at least 1, got {num_envs}")
        self.env_id = env_id
        self.num_envs = num_envs
        self._episodes = _EpisodeTracker(num_envs)

    @abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Reset every env (env ``i`` from ``seed + i`` where the family allows); (N, *obs_shape)."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> Step:
        """Apply integer actions (N,) in ``[0, num_actions)``, or Box actions (N, A)."""

    @abstractmethod
    def render(self) -> np.ndarray:
        """RGB uint8 frame (H, W, 3) of env 0."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the environments."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id!r}, num_envs={self.num_envs})"


def as_actions(actions: np.ndarray, num_envs: int) -> np.ndarray:
    """``actions`` as int64 of shape (``num_envs``,); ValueError for any other shape."""
    actions = np.asarray(actions)
    if actions.shape != (num_envs,):
        raise ValueError(f"expected actions of shape ({num_envs},), got {actions.shape}")
    return actions.astype(np.int64, copy=False)


def as_box_actions(
    actions: np.ndarray, num_envs: int, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """``actions`` (N, A) clipped to [low, high] (A,) as float32; ValueError for another shape."""
    actions = np.asarray(actions)
    if actions.shape != (num_envs, low.shape[0]):
        raise ValueError(
            f"expected actions of shape ({num_envs}, {low.shape[0]}), got {actions.shape}"
        )
    return np.clip(actions, low, high).astype(np.float32, copy=False)
