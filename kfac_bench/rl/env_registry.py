"""Which environment an id names: its family, its registry entry, and whether it is supported.

:func:`env_family` reads the family from the id alone (the presets' tables ask it too);
:func:`env_spec` registers MinAtar and ALE ids on first need; :func:`check_env_id` refuses, in
one line, ids that are unknown (with close matches), without Box observations, or whose actions
are neither Discrete nor a bounded 1-D Box.
"""

from __future__ import annotations

import difflib
import functools
import os

import gymnasium as gym
import numpy as np

from kfac_bench.rl.vec_env import EnvError

EnvFamily = str  # "classic" | "continuous" | "minatar" | "atari" | "generic"

#: Names (the id before "-v") of the continuous-control tasks: MuJoCo (gymnasium[mujoco]) and the
#: Box-action classic-control and Box2D tasks. Their family default is the ``mujoco-tuned`` preset.
CONTINUOUS_TASKS = frozenset(
    {
        "HalfCheetah",
        "Hopper",
        "Walker2d",
        "Ant",
        "Humanoid",
        "HumanoidStandup",
        "InvertedPendulum",
        "InvertedDoublePendulum",
        "Reacher",
        "Swimmer",
        "Pusher",
        "Pendulum",
        "MountainCarContinuous",
        "LunarLanderContinuous",
        "BipedalWalker",
        "BipedalWalkerHardcore",
    }
)


def env_family(env_id: str) -> EnvFamily:
    """Which family an environment id belongs to: MinAtar, Atari (ALE), classic control,
    continuous control (MuJoCo and the Box-action classic tasks) or generic.

    The family picks the vector-env implementation here and the default tables in
    :mod:`kfac_bench.presets`; it is read from the id alone, so it never needs gymnasium's registry.
    """
    if env_id.startswith("MinAtar/"):
        return "minatar"
    if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4"):
        return "atari"
    name = env_id.split("-v")[0]
    if name in {"CartPole", "Acrobot", "MountainCar", "LunarLander"}:
        return "classic"
    if name in CONTINUOUS_TASKS:
        return "continuous"
    return "generic"


# ---------------------------------------------------------------------------------------------
# Registry and validation


@functools.cache
def _register_ale() -> None:
    import ale_py

    gym.register_envs(ale_py)


@functools.cache
def _register_minatar() -> None:
    import minatar.gym  # imports seaborn (~1 s), hence only when a MinAtar id is asked for

    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registry entry; MinAtar and ALE ids are registered on first need (idempotent)."""
    family = env_family(env_id)
    if family == "atari":
        _register_ale()
    elif family == "minatar":
        _register_minatar()
    if env_id not in gym.registry:  # register everything so that close matches can be offered
        _register_ale()
        _register_minatar()
    if env_id in gym.registry:
        return gym.registry[env_id]
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise EnvError(f"unknown environment id {env_id!r}{hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@functools.cache
def _spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of one instance (built once per process)."""
    try:
        env = gym.make(env_id, disable_env_checker=True)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvError(f"{env_id}: a dependency is missing: {_first_line(exc)}") from exc
    except Exception as exc:
        hint = ""
        if "MUJOCO_GL" in os.environ:  # a MuJoCo env imports its OpenGL backend on creation
            hint = f"; MUJOCO_GL={os.environ['MUJOCO_GL']} is set: egl or osmesa need their library"
        raise EnvError(f"{env_id}: could not be created ({_first_line(exc)}){hint}") from exc
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` unless ``env_id`` is registered, has Box observations and Discrete
    or bounded 1-D Box actions.

    Atari and MinAtar ids are checked from their registry entries alone; other ids build one
    instance (cached), which is milliseconds for classic control.
    """
    spec = env_spec(env_id)
    family = env_family(env_id)
    if family == "atari":
        if spec.kwargs.get("obs_type", "rgb") == "ram":
            raise EnvError(f"{env_id} has RAM observations; use the image id (e.g. ALE/Pong-v5)")
        if spec.kwargs.get("continuous", False):
            raise EnvError(
                f"{env_id} has a Box action space; only discrete (Categorical) policies are "
                "supported"
            )
        atari_game(spec)
        return
    if family == "minatar":
        return
    obs_space, act_space = _spaces(env_id)
    if isinstance(act_space, gym.spaces.Box):
        check_box_actions(env_id, act_space)
    elif not isinstance(act_space, gym.spaces.Discrete):
        kind = type(act_space).__name__
        raise EnvError(
            f"{env_id} has a {kind} action space; supported: Discrete (Categorical policy) and "
            "bounded 1-D Box (diagonal Gaussian policy)"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        kind = type(obs_space).__name__
        raise EnvError(
            f"{env_id} has a {kind} observation space; only Box observations are supported"
        )


def check_box_actions(env_id: str, space: gym.spaces.Box) -> None:
    """A Gaussian policy needs a 1-D Box with finite bounds (it clips its samples to them)."""
    if len(space.shape) != 1:
        raise EnvError(
            f"{env_id} has Box actions of shape {space.shape}; only 1-D Box actions are supported"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise EnvError(
            f"{env_id} has an unbounded Box action space (low {space.low.tolist()}, high "
            f"{space.high.tolist()}); the Gaussian policy's actions are clipped to finite bounds"
        )


def atari_game(spec: gym.envs.registration.EnvSpec) -> str:
    """ale-py's ROM id (snake_case, ``ms_pacman``) for a registered Atari id."""
    from ale_py import roms

    game = spec.kwargs.get("game")
    if game is None:  # derive from the name: "MsPacmanNoFrameskip" -> "ms_pacman"
        name = spec.name.removesuffix("NoFrameskip").removesuffix("Deterministic").lower()
        game = {g.replace("_", ""): g for g in roms.get_all_rom_ids()}.get(name, name)
    if game not in roms.get_all_rom_ids():
        raise EnvError(f"{spec.id}: ale-py has no ROM named {game!r}")
    return game
