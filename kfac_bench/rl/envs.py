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

Episode returns and lengths are tracked here, never by wrappers, so every family logs the same
way. Observations are float32 except Atari's uint8 frames (the network divides by 255).
"""

from __future__ import annotations

import colorsys
import difflib
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from kfac_bench.config import AtariConfig

DEFAULT_ATARI = AtariConfig()  # the standard protocol (frozen, so a safe default)
ATARI_FRAME_LIMIT = 108_000  # emulator frames per game (30 min at 60 Hz); baselines / ALE v5


class EnvError(ValueError):
    """A bad environment id or an unsupported environment. The message is one line."""


EnvFamily = str  # "classic" | "minatar" | "atari" | "generic"


def env_family(env_id: str) -> EnvFamily:
    """Which family an environment id belongs to: MinAtar, Atari (ALE), classic control or generic.

    The family picks the vector-env implementation here and the default tables in
    :mod:`kfac_bench.presets`; it is read from the id alone, so it never needs gymnasium's registry.
    """
    if env_id.startswith("MinAtar/"):
        return "minatar"
    if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4"):
        return "atari"
    if env_id.split("-v")[0] in {"CartPole", "Acrobot", "MountainCar", "LunarLander"}:
        return "classic"
    return "generic"


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
    """N copies of one environment, stepped together, reset on the same step they end."""

    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    env_id: str

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
        """Apply integer actions of shape (N,) in ``[0, num_actions)``."""

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


def _spec(env_id: str) -> gym.envs.registration.EnvSpec:
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
        raise EnvError(f"{env_id}: could not be created ({_first_line(exc)})") from exc
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` unless ``env_id`` is registered, discrete-action, Box-observation.

    Atari and MinAtar ids are checked from their registry entries alone; other ids build one
    instance (cached), which is milliseconds for classic control.
    """
    spec = _spec(env_id)
    family = env_family(env_id)
    if family == "atari":
        if spec.kwargs.get("obs_type", "rgb") == "ram":
            raise EnvError(f"{env_id} has RAM observations; use the image id (e.g. ALE/Pong-v5)")
        if spec.kwargs.get("continuous", False):
            raise EnvError(
                f"{env_id} has a Box action space; only discrete (Categorical) policies are "
                "supported"
            )
        _atari_game(spec)
        return
    if family == "minatar":
        return
    obs_space, act_space = _spaces(env_id)
    if not isinstance(act_space, gym.spaces.Discrete):
        kind = type(act_space).__name__
        raise EnvError(
            f"{env_id} has a {kind} action space; only discrete (Categorical) policies are "
            "supported"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        kind = type(obs_space).__name__
        raise EnvError(
            f"{env_id} has a {kind} observation space; only Box observations are supported"
        )


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
    native = _native_cartpole(env_id, num_envs)
    if native is not None:
        return CartPoleVecEnv(env_id, native)
    return GymLoopVecEnv(env_id, num_envs, render=render)


def _as_actions(actions: np.ndarray, num_envs: int) -> np.ndarray:
    actions = np.asarray(actions)
    if actions.shape != (num_envs,):
        raise ValueError(f"expected actions of shape ({num_envs},), got {actions.shape}")
    return actions.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# CartPole: gymnasium's numpy vector env, same-step reset


def _native_cartpole(env_id: str, num_envs: int) -> Any | None:
    """gymnasium's ``CartPoleVectorEnv`` for ``env_id`` when the registry provides it."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    if _spec(env_id).vector_entry_point is None:
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
        obs, reward, terminated, truncated, _ = env.step(_as_actions(actions, self.num_envs))
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
    """Any Discrete-action, Box-observation id: N ``gym.make`` envs stepped in a Python loop."""

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
        actions = _as_actions(actions, self.num_envs) + self._action_start
        n = self.num_envs
        obs = np.empty((n, *self.obs_shape), dtype=np.float32)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final: dict[int, Any] = {}
        for i, env in enumerate(self._envs):
            o, r, term, trunc, _ = env.step(int(actions[i]))
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
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        for env in self._envs:
            env.close()


# ---------------------------------------------------------------------------------------------
# MinAtar


class MinAtarVecEnv(VecEnv):
    """MinAtar games (``MinAtar/<Game>-v1``): channels-first float32 (C, 10, 10) observations."""

    def __init__(self, env_id: str, num_envs: int) -> None:
        super().__init__(env_id, num_envs)
        spec = _spec(env_id)
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
        game_actions = self._action_set[_as_actions(actions, self.num_envs)]
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


# ---------------------------------------------------------------------------------------------
# Atari (ale-py AtariVectorEnv)


def _atari_game(spec: gym.envs.registration.EnvSpec) -> str:
    """ale-py's ROM id (snake_case, ``ms_pacman``) for a registered Atari id."""
    from ale_py import roms

    game = spec.kwargs.get("game")
    if game is None:  # derive from the name: "MsPacmanNoFrameskip" -> "ms_pacman"
        name = spec.name.removesuffix("NoFrameskip").removesuffix("Deterministic").lower()
        game = {g.replace("_", ""): g for g in roms.get_all_rom_ids()}.get(name, name)
    if game not in roms.get_all_rom_ids():
        raise EnvError(f"{spec.id}: ale-py has no ROM named {game!r}")
    return game


class AtariVecEnv(VecEnv):
    """Atari through ale-py's ``AtariVectorEnv`` (module docstring for the protocol).

    ale-py zero-pads the frame stack after a reset (as SB3's ``VecFrameStack``), where
    baselines' ``FrameStack`` repeats the first frame.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        training: bool = True,
        config: AtariConfig = DEFAULT_ATARI,
    ) -> None:
        import ale_py
        from gymnasium.vector import AutoresetMode

        super().__init__(env_id, num_envs)
        spec = _spec(env_id)
        self.game = _atari_game(spec)
        self.episodic_life = training and config.episodic_life
        self.reward_clip = training and config.reward_clip
        self._ale = ale_py.AtariVectorEnv(
            self.game,
            num_envs,
            max_num_frames_per_episode=int(
                spec.kwargs.get("max_num_frames_per_episode") or ATARI_FRAME_LIMIT
            ),
            repeat_action_probability=config.repeat_action_probability,
            autoreset_mode=AutoresetMode.SAME_STEP,
            img_height=84,
            img_width=84,
            grayscale=True,
            stack_num=4,
            frameskip=config.frame_skip,
            maxpool=True,
            noop_max=config.noop_max,
            episodic_life=False,  # done here, so that the game is never reset on a life loss
            life_loss_info=False,
            reward_clipping=False,  # done here, so that Episode.ret stays the raw score
            use_fire_reset=True,
        )
        self.obs_shape = tuple(self._ale.single_observation_space.shape)
        self.obs_dtype = np.dtype(np.uint8)
        self.num_actions = int(self._ale.single_action_space.n)
        self.lives = np.zeros(num_envs, dtype=np.int32)  # ALE lives of the game in progress
        self._last_obs: np.ndarray | None = None

    def reset(self, seed: int) -> np.ndarray:
        obs, info = self._ale.reset(seed=seed)
        self.lives = np.asarray(info["lives"], dtype=np.int32).copy()
        self._episodes.reset()
        self._last_obs = obs
        return obs

    def step(self, actions: np.ndarray) -> Step:
        obs, raw, game_over, truncated, info = self._ale.step(_as_actions(actions, self.num_envs))
        raw = raw.astype(np.float32)
        ended = game_over | truncated
        finished = self._episodes.add(raw, ended)
        lives = np.asarray(info["lives"], dtype=np.int32)  # after the reset where a game ended
        terminated = game_over.copy()
        if self.episodic_life:
            # baselines EpisodicLifeEnv: a lost life (with lives left) ends the training episode.
            terminated |= (lives < self.lives) & (lives > 0) & ~ended
        self.lives = lives.copy()
        final_obs = obs
        if ended.any():
            final_obs = obs.copy()
            final_obs[ended] = info["final_obs"][ended]
        reward = np.sign(raw) if self.reward_clip else raw
        self._last_obs = obs
        return Step(obs, reward, terminated, truncated & ~terminated, final_obs, finished)

    def render(self) -> np.ndarray:
        if self._last_obs is None:
            raise EnvError("render() before reset()")
        frame = self._last_obs[0, -1]
        return np.repeat(frame[:, :, None], 3, axis=2)

    def close(self) -> None:
        self._ale.close()
