"""Running normalisation of observations and rewards (``normalize.*`` in the config).

The semantics are SB3's ``VecNormalize`` (``stable_baselines3/common/vec_env/vec_normalize.py``
and ``running_mean_std.py``), which CleanRL's ``ppo_continuous_action.py`` gets from gymnasium's
``NormalizeObservation`` / ``NormalizeReward`` wrappers:

* :class:`RunningMeanStd` — batched parallel mean/variance (Chan et al.), starting at mean 0,
  var 1 and a count of 1e-4.
* :class:`ObservationNormalizer` — ``update`` folds a batch of raw observations (N, *obs) into
  the statistics, then ``normalize`` gives clip((o − mean)/sqrt(var + 1e-8), ±clip).
* :class:`RewardScaler` — keeps the discounted return G ← γ·G + r per env (zeroed where an
  episode ends), folds G into its statistics and returns clip(r / sqrt(var(G) + 1e-8), ±clip).

All arithmetic is float64 numpy, so a run stays deterministic. The trainer applies both to
what the envs return, before anything is stored; episode returns are logged raw by the envs.
``state_dict`` (float64 tensors, which a weights-only checkpoint load accepts) goes into the
checkpoint, and ``play`` normalises with the frozen statistics.
"""

from __future__ import annotations

import numpy as np
import torch

EPSILON = 1e-8


class RunningMeanStd:
    """Mean and variance of everything folded in so far, over the leading axis."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        """Fold ``batch`` (M, *shape) in (the parallel-variance combination of two samples)."""
        batch = np.asarray(batch, dtype=np.float64)
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        m2 = m2 + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {
            "mean": torch.tensor(np.asarray(self.mean)),
            "var": torch.tensor(np.asarray(self.var)),
            "count": float(self.count),
        }

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.var = np.array(state["var"], dtype=np.float64)
        self.count = float(state["count"])


class ObservationNormalizer:
    """clip((o − mean)/sqrt(var + 1e-8), ±clip) with running statistics of the raw observations."""

    def __init__(self, obs_shape: tuple[int, ...], clip: float) -> None:
        self.stats = RunningMeanStd(tuple(obs_shape))
        self.clip = float(clip)

    def update(self, obs: np.ndarray) -> None:
        self.stats.update(obs)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """float32 (N, *obs_shape) normalised with the current statistics (not updated)."""
        scaled = (np.asarray(obs, dtype=np.float64) - self.stats.mean) / np.sqrt(
            self.stats.var + EPSILON
        )
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)


class RewardScaler:
    """clip(r / sqrt(var(G) + 1e-8), ±clip), G the running discounted return of each env."""

    def __init__(self, num_envs: int, gamma: float, clip: float) -> None:
        self.stats = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma = float(gamma)
        self.clip = float(clip)

    def scale(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """float32 (N,) scaled rewards of one step; ``done`` (N,) bool ends the envs' returns."""
        self.returns = self.returns * self.gamma + np.asarray(reward, dtype=np.float64)
        self.stats.update(self.returns)
        scaled = np.asarray(reward, dtype=np.float64) / np.sqrt(self.stats.var + EPSILON)
        self.returns[np.asarray(done, dtype=bool)] = 0.0
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def reset(self) -> None:
        """Episodes restart (a resumed run resets its envs): the running returns restart too."""
        self.returns[:] = 0.0

    def state_dict(self) -> dict:
        return {**self.stats.state_dict(), "returns": torch.tensor(np.asarray(self.returns))}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self.returns = np.array(state["returns"], dtype=np.float64)
