"""Vectorised environments by Gymnasium id, behind one :class:`VecEnv` interface (DESIGN.md §4).

Every family returns the same :class:`Step` record with *same-step* autoreset: where an episode
ends, ``obs`` already holds the first observation of the next one and ``final_obs`` the last
observation of the ended one (the trainer bootstraps from it on ``truncated``).

Families (:func:`env_family`):

* **CartPole** — gymnasium's native ``CartPoleVectorEnv`` (numpy over all envs at once). It
  resets on the *next* step (``AutoresetMode.NEXT_STEP``); :class:`CartPoleVecEnv` moves that
  reset to the same step by redrawing the ended envs' state exactly as the env's own reset does
  (uniform in ``[low, high]`` from the env's generator).
* **generic** (any other registered id with Discrete actions and Box observations) — a plain
  loop over ``num_envs`` ``gym.make`` instances (their TimeLimit gives ``truncated``).
* **MinAtar** (Young & Tian 2019) — a loop over the games' ``minatar.Environment`` objects;
  observations (10, 10, C) bool become channels-first float32 (C, 10, 10). MinAtar's own
  protocol is kept: sticky actions 0.1 and difficulty ramping (the ``minatar.gym`` defaults).
* **Atari** — ale-py's C++ ``AtariVectorEnv`` with the standard protocol of Mnih et al. (2015) /
  Machado et al. (2018) as used by openai/baselines ``atari_wrappers.py``: up to 30 no-op
  starts, frame skip 4 with a max-pool over the last two frames, 84×84 grey, 4-frame stack,
  FIRE on reset, a 108 000-frame limit, sticky actions off unless ``AtariConfig`` says so.
  Episodic life and reward clipping are applied *here* for training only, so the logged
  :class:`Episode` is always the raw full-game score: a life loss (``info["lives"]`` drops)
  sets ``terminated`` but the game goes on without a reset.

Episode returns and lengths are tracked in :class:`VecEnv`, never by wrappers, so every family
logs the same way. Observations are float32 except Atari's uint8 frames (the network divides by
255).

This module is the facade: :func:`make_env` and the names callers use. The interface is in
:mod:`kfac_bench.rl.vec_env`, ids and families in :mod:`kfac_bench.rl.env_registry`, the
families in :mod:`kfac_bench.rl.env_classic`, :mod:`kfac_bench.rl.env_minatar` and
:mod:`kfac_bench.rl.env_atari`.
"""

from __future__ import annotations

from kfac_bench.config import AtariConfig
from kfac_bench.rl.env_atari import DEFAULT_ATARI, AtariVecEnv
from kfac_bench.rl.env_classic import CartPoleVecEnv, GymLoopVecEnv, native_cartpole
from kfac_bench.rl.env_minatar import MinAtarVecEnv
from kfac_bench.rl.env_registry import EnvFamily, check_env_id, env_family, env_spec
from kfac_bench.rl.vec_env import EnvError, Episode, Step, VecEnv

__all__ = [
    "AtariVecEnv",
    "CartPoleVecEnv",
    "EnvError",
    "EnvFamily",
    "Episode",
    "GymLoopVecEnv",
    "MinAtarVecEnv",
    "Step",
    "VecEnv",
    "check_env_id",
    "env_family",
    "env_spec",
    "make_env",
]


def make_env(
    env_id: str,
    num_envs: int,
    *,
    training: bool = True,
    atari: AtariConfig = DEFAULT_ATARI,
    render: bool = False,
) -> VecEnv:
    """Build ``num_envs`` copies of ``env_id`` (call :meth:`VecEnv.reset` before stepping).

    ``training`` only matters for Atari (episodic life, reward clipping); ``render=True`` lets
    generic envs render env 0 (CartPole, MinAtar and Atari render in any case).
    """
    check_env_id(env_id)
    family = env_family(env_id)
    if family == "atari":
        return AtariVecEnv(env_id, num_envs, training=training, config=atari)
    if family == "minatar":
        return MinAtarVecEnv(env_id, num_envs)
    native = native_cartpole(env_id, num_envs)
    if native is not None:
        return CartPoleVecEnv(env_id, native)
    return GymLoopVecEnv(env_id, num_envs, render=render)
