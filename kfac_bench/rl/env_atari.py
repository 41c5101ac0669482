"""Atari through ale-py's C++ ``AtariVectorEnv`` with the protocol of Mnih et al. (2015) as
openai/baselines ``atari_wrappers.py`` applies it (the protocol is in :mod:`kfac_bench.rl.envs`)."""

from __future__ import annotations

import numpy as np

from kfac_bench.config import AtariConfig
from kfac_bench.rl.env_registry import atari_game, env_spec
from kfac_bench.rl.vec_env import EnvError, Step, VecEnv, as_actions

DEFAULT_ATARI = AtariConfig()  # the standard protocol (frozen, so a safe default)
ATARI_FRAME_LIMIT = 108_000  # emulator frames per game (30 min at 60 Hz); baselines / ALE v5


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
        spec = env_spec(env_id)
        self.game = atari_game(spec)
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
        obs, raw, game_over, truncated, info = self._ale.step(as_actions(actions, self.num_envs))
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
