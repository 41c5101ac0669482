"""Reference scores for per-environment min–max normalisation, with their sources.

A normalised score is ``(score − random) / (best − random)``: 0 is a uniform-random policy,
1 the "best-known" reference (the maximum return, a best-known average, or human level for
Atari, as in Mnih et al. 2015). Where a bound is unknown (``None``) the analysis falls back to
the lowest / highest final score observed in the sweep for that environment and says so in the
report (see :func:`analysis.tables.normalisation_bounds`).

Sources
-------
* Classic control, random: measured for this table with a uniform-random policy, 1000 episodes
  each (``env.action_space.sample()``, reset seeds 0…999, gymnasium 1.4.0): CartPole-v1
  22.2 ± 0.4 (s.e.), Acrobot-v1 −499.1 ± 0.3, MountainCar-v0 −200.0 ± 0.0.
* CartPole-v0/v1, best: the maximum return (episodes are truncated at 200/500 steps, +1 per
  step).
* Acrobot-v1, best: −60, an approximate best-known 100-episode average for well-tuned agents
  (the value given in kfac-bench issue #5; treat as approximate).
* Continuous control (Box actions), random: measured for this table with a uniform-random policy
  (``env.action_space.sample()``, action seed 0), 100 episodes each (reset seeds 0…99, gymnasium
  1.4.0, mujoco 3 / 4 wheel): mean ± s.e. Pendulum-v1 −1207.6 ± 29.5, MountainCarContinuous-v0
  −33.3 ± 0.1, InvertedPendulum-v5 5.2 ± 0.4, InvertedDoublePendulum-v5 49.1 ± 1.8, Hopper-v5
  16.7 ± 1.8, HalfCheetah-v5 −282.5 ± 7.3, Walker2d-v5 1.8 ± 0.8, Ant-v5 −48.0 ± 8.3, Reacher-v5
  −43.3 ± 0.4, Swimmer-v5 0.8 ± 0.9. Best: InvertedPendulum-v5's maximum return 1000 (+1 per step,
  1000 steps); elsewhere no bound we verified, so ``None``.
* MinAtar (Young & Tian 2019, ``minatar`` 1.0.15, gymnasium ids ``MinAtar/<Game>-v1``),
  random: measured for this table with a uniform-random policy, 300 episodes per game (reset
  seeds 0…299). Best: no published reference score we could verify, so ``None`` (the sweep's
  best observed final score is used and the report flags it).
* Atari 2600, random and human: Mnih et al. 2015, "Human-level control through deep
  reinforcement learning", Nature 518, Extended Data Table 2 (no-op starts, up to 30 no-ops).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """Min–max normalisation bounds for one environment; ``None`` means "not known"."""

    random: float | None
    best: float | None
    source: str


_MEASURED = "uniform-random policy measured for analysis/references.py"
_NATURE = "Mnih et al. 2015 (Nature), Extended Data Table 2: random / human"

CLASSIC: dict[str, Reference] = {
    "CartPole-v1": Reference(22.2, 500.0, f"random: {_MEASURED}; best: max return 500"),
    "CartPole-v0": Reference(22.2, 200.0, f"random: {_MEASURED} (v1); best: max return 200"),
    "Acrobot-v1": Reference(
        -499.1, -60.0, f"random: {_MEASURED}; best: ≈ −60, approximate best-known average"
    ),
    "MountainCar-v0": Reference(-200.0, None, f"random: {_MEASURED}; best: not known"),
}

# Box-action tasks (matched exactly).
CONTINUOUS: dict[str, Reference] = {
    env_id: Reference(random, best, f"random: {_MEASURED} (100 episodes); best: {why}")
    for env_id, (random, best, why) in {
        "Pendulum-v1": (-1207.6, None, "not known"),
        "MountainCarContinuous-v0": (-33.3, None, "not known"),
        "InvertedPendulum-v5": (5.2, 1000.0, "max return 1000"),
        "InvertedDoublePendulum-v5": (49.1, None, "not known"),
        "Hopper-v5": (16.7, None, "not known"),
        "HalfCheetah-v5": (-282.5, None, "not known"),
        "Walker2d-v5": (1.8, None, "not known"),
        "Ant-v5": (-48.0, None, "not known"),
        "Reacher-v5": (-43.3, None, "not known"),
        "Swimmer-v5": (0.8, None, "not known"),
    }.items()
}

# MinAtar games (the game name as in ``MinAtar/<Game>-v1``).
MINATAR: dict[str, Reference] = {
    game: Reference(score, None, f"random: {_MEASURED} (300 episodes); best: not known")
    for game, score in {
        "Asterix": 0.50,
        "Breakout": 0.41,
        "Freeway": 0.43,
        "Seaquest": 0.09,
        "SpaceInvaders": 4.25,
    }.items()
}

# Atari games (the ALE game name as in ``ALE/<Game>-v5`` / ``<Game>NoFrameskip-v4``).
ATARI: dict[str, Reference] = {
    game: Reference(random, human, _NATURE)
    for game, (random, human) in {
        "BeamRider": (363.9, 5774.7),
        "Breakout": (1.7, 31.8),
        "Pong": (-20.7, 9.3),
        "Qbert": (163.9, 13455.0),
        "Seaquest": (68.4, 20181.8),
        "SpaceInvaders": (148.0, 1652.3),
    }.items()
}

_ATARI_ID = re.compile(r"^(?:ALE/)?([A-Za-z]+?)(?:NoFrameskip|Deterministic)?-v\d+$")


def reference_for(env_id: str) -> Reference | None:
    """The reference bounds for a Gymnasium id, or None when the table has none.

    ``MinAtar/Breakout-v1`` → MinAtar Breakout; ``ALE/Breakout-v5``, ``BreakoutNoFrameskip-v4``
    → Atari Breakout; classic-control ids are matched exactly.
    """
    if env_id in CLASSIC:
        return CLASSIC[env_id]
    if env_id in CONTINUOUS:
        return CONTINUOUS[env_id]
    if env_id.startswith("MinAtar/"):
        game = env_id.split("/", 1)[1].split("-v", 1)[0]
        return MINATAR.get(game)
    match = _ATARI_ID.match(env_id)
    if match:
        return ATARI.get(match.group(1))
    return None
