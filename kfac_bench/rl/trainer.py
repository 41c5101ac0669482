"""One trainer for every variant and every update rule (ACKTR, and the controls A2C and PPO).

Lifecycle of one update (DESIGN.md §4), the same for every variant and rule — the loop never looks
at the variant's name nor at the algorithm:

    collect n_steps × n_envs transitions (observations and rewards normalised if configured)
    ->  returns (n-step or GAE)
    -> rule.update(batch): ACKTR (Fisher pass, training loss, K-FAC step), A2C (RMSprop step) or
       PPO (clipped epochs); see ``update_rules.py``
    -> log (updates.csv every ``log.update_every`` updates), checkpoint

``train(config, run_dir)`` owns the run directory (store.py): it starts a run, resumes an
unfinished one from ``checkpoint.pt`` (cutting the CSVs back to the checkpoint's step; episodes in
progress at the checkpoint are discarded and the envs reset with a seed derived from the update),
or does nothing for a finished one. The policy's distribution follows the action space: Categorical
for Discrete, diagonal Gaussian for Box (actions stored unclipped; the env clips them). Divergence (non-finite loss, factor or parameter) ends the run
with state ``diverged`` and the reason; any other exception is recorded as ``failed`` and re-raised.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kfac_bench import allocator, store, timing, tracking
from kfac_bench import config as config_mod
from kfac_bench.config import RunConfig
from kfac_bench.curvature import KFAC
from kfac_bench.rl.distributions import Categorical
from kfac_bench.rl.envs import VecEnv, make_env
from kfac_bench.rl.losses import fisher_loss, training_loss  # noqa: F401  (re-exported)
from kfac_bench.rl.normalize import ObservationNormalizer, RewardScaler
from kfac_bench.rl.policies import ActorCritic, build_policy, separate_critic_for
from kfac_bench.rl.returns import gae_advantages, nstep_returns
from kfac_bench.rl.update_rules import Batch, Diverged, UpdateRule, build_update_rule, lr_at  # noqa: F401


@dataclass
class Progress:
    """What a progress display gets after every update."""

    steps: int
    total_steps: int
    fps: float
    recent_return: float  # mean of the last 20 finished episodes (nan before the first)
    episodes: int


@dataclass
class RunResult:
    state: str  # done | diverged | already-done
    steps: int
    error: str | None = None


ProgressCallback = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------------
# small pieces of the loop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def sample_actions(logits: torch.Tensor) -> torch.Tensor:
    """Categorical sample by the Gumbel-max trick (one kernel; uses the torch RNG)."""
    return Categorical(logits).sample()


class Rollout:
    """Preallocated (T, N, ...) buffers for one batch; ``action_shape`` () for Discrete actions
    (long), (A,) for Box actions (float)."""

    def __init__(
        self,
        t: int,
        n: int,
        obs_shape,
        obs_dtype: torch.dtype,
        device: torch.device,
        action_shape: tuple[int, ...] = (),
    ):
        self.obs = torch.zeros((t, n, *obs_shape), dtype=obs_dtype, device=device)
        action_dtype = torch.float32 if action_shape else torch.long
        self.actions = torch.zeros((t, n, *action_shape), dtype=action_dtype, device=device)
        self.rewards = torch.zeros((t, n), device=device)
        self.values = torch.zeros((t, n), device=device)
        self.terminated = torch.zeros((t, n), dtype=torch.bool, device=device)
        self.truncated = torch.zeros((t, n), dtype=torch.bool, device=device)
        self.final_values = torch.zeros((t, n), device=device)
        self.truncated_obs: list[tuple[int, int, np.ndarray]] = []  # (t, env, final_obs)


# ---------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Holds the run's objects; ``run`` is the loop. Built fresh or from a checkpoint."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self.device = resolve_device(config.device)
        allocator.keep_freed_memory()  # no page faults on each update's large temporaries
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)

        self.env: VecEnv = make_env(
            config.env, config.rollout.n_envs, training=True, atari=config.atari
        )
        self.policy: ActorCritic = build_policy(
            self.env.obs_shape,
            self.env.num_actions,
            config.policy,
            separate_critic=separate_critic_for(config),
            continuous=self.env.continuous,
        ).to(self.device)
        self.rule: UpdateRule = build_update_rule(self.policy, config)
        n = config.normalize
        self.obs_norm = ObservationNormalizer(self.env.obs_shape, n.obs_clip) if n.obs else None
        self.reward_scaler = (
            RewardScaler(config.rollout.n_envs, config.rollout.gamma, n.reward_clip)
            if n.reward
            else None
        )

        self.steps = 0
        self.updates = 0
        self.resets = 0  # env resets (1 + resumes): seeds the envs deterministically
        self.wall_offset = 0.0  # wall time of earlier sessions of this run

    # --- checkpoint ---------------------------------------------------------------------------
    @property
    def kfac(self) -> KFAC | None:
        """The rule's K-FAC optimiser (None for the first-order controls)."""
        return self.rule.kfac

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            **self.rule.state_dict(),
            "steps": self.steps,
            "updates": self.updates,
            "resets": self.resets,
            "wall_time": self.wall_offset,
            "torch_rng": torch.get_rng_state(),
            "obs_norm": self.obs_norm and self.obs_norm.state_dict(),
            "reward_scaler": self.reward_scaler and self.reward_scaler.state_dict(),
            "config": config_mod.to_dict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.rule.load_state_dict(state)
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.resets = int(state["resets"])
        self.wall_offset = float(state["wall_time"])
        torch.set_rng_state(state["torch_rng"])
        if self.obs_norm is not None:
            self.obs_norm.load_state_dict(state["obs_norm"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])

    # --- one batch ------------------------------------------------------------------------------
    def obs_tensor(self, obs: np.ndarray, *, update: bool = False) -> torch.Tensor:
        """Observations as the policy sees them: normalised when ``normalize.obs`` (the
        statistics first take in ``obs`` when ``update``)."""
        if self.obs_norm is not None:
            if update:
                self.obs_norm.update(obs)
            obs = self.obs_norm.normalize(obs)
        return torch.as_tensor(obs, device=self.device)

    def training_reward(self, step) -> np.ndarray:
        """The reward the update sees: scaled when ``normalize.reward`` (episodes stay raw)."""
        if self.reward_scaler is None:
            return step.reward
        return self.reward_scaler.scale(step.reward, step.terminated | step.truncated)

    @torch.no_grad()
    def collect(self, rollout: Rollout, obs: torch.Tensor, on_episode) -> torch.Tensor:
        """Fill ``rollout`` with T steps from ``obs``; returns the observation after the last."""
        rollout.truncated_obs.clear()
        n = self.config.rollout.n_envs
        for t in range(self.config.rollout.n_steps):
            with timing.phase("act"):
                head, values = self.policy(obs)
                actions = self.policy.distribution(head).sample()
            with timing.phase("env"):
                step = self.env.step(actions.cpu().numpy())
            self.steps += n
            rollout.obs[t] = obs
            rollout.actions[t] = actions
            rollout.values[t] = values
            rollout.rewards[t] = torch.as_tensor(self.training_reward(step), device=self.device)
            rollout.terminated[t] = torch.as_tensor(step.terminated, device=self.device)
            rollout.truncated[t] = torch.as_tensor(step.truncated, device=self.device)
            for env_index in np.flatnonzero(step.truncated & ~step.terminated):
                rollout.truncated_obs.append((t, int(env_index), step.final_obs[env_index]))
            for episode in step.finished:
                on_episode(episode)
            with timing.phase("env"):
                obs = self.obs_tensor(step.obs, update=True)
        if rollout.truncated_obs:
            final = self.obs_tensor(np.stack([o for _, _, o in rollout.truncated_obs]))
            _, final_values = self.policy(final)
            rollout.final_values.zero_()
            for (t, env_index, _), value in zip(rollout.truncated_obs, final_values):
                rollout.final_values[t, env_index] = value
        return obs

    def returns(self, rollout: Rollout, last_obs: torch.Tensor):
        with torch.no_grad():
            _, last_value = self.policy(last_obs)
        r = self.config.rollout
        args = (rollout.terminated, rollout.truncated, rollout.final_values, last_value, r.gamma)
        if r.gae_lambda is None:
            returns = nstep_returns(rollout.rewards, *args)
            advantages = returns - rollout.values
        else:
            advantages, returns = gae_advantages(
                rollout.rewards, rollout.values, *args, lam=r.gae_lambda
            )
        return advantages.reshape(-1), returns.reshape(-1)

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor, log: bool):
        """Hand the flattened batch to the update rule. Returns its metrics dict (tensors)."""
        batch = Batch(
            obs=rollout.obs.reshape(-1, *rollout.obs.shape[2:]),
            actions=rollout.actions.reshape(-1, *rollout.actions.shape[2:]),
            advantages=advantages,
            returns=returns,
            values=rollout.values.reshape(-1),
        )
        metrics = self.rule.update(batch, self.steps, log)
        self.updates += 1
        return metrics

    def check_parameters(self) -> None:
        finite = torch.stack([p.isfinite().all() for p in self.policy.parameters()]).all()
        if not bool(finite):
            raise Diverged(f"non-finite parameters after update {self.updates}")

    # --- the loop -----------------------------------------------------------------------------
    def run(self, on_progress: ProgressCallback | None = None) -> RunResult:
        c = self.config
        # TensorBoard / W&B get the same rows (tracking.py); resumed: cut back to the checkpoint
        tracker = tracking.Tracker(c, self.run_dir, self.steps if self.updates else None)
        episodes_log = store.CsvLog(self.run_dir / "episodes.csv", store.EPISODE_COLUMNS)
        diag_columns = self.rule.diagnostic_columns()
        updates_log = store.CsvLog(
            self.run_dir / "updates.csv", store.UPDATE_COLUMNS + diag_columns
        )
        final = False  # done or diverged: every row the tracker got is kept
        start = time.perf_counter()
        recent = collections.deque(maxlen=20)
        pending_episodes: list[dict] = []
        episode_count = 0

        def wall() -> float:
            return self.wall_offset + time.perf_counter() - start

        def on_episode(episode) -> None:
            nonlocal episode_count
            recent.append(episode.ret)
            episode_count += 1
            pending_episodes.append(
                {
                    "step": self.steps,
                    "wall_time": round(wall(), 3),
                    "return": episode.ret,
                    "length": episode.length,
                }
            )

        obs_dtype = torch.uint8 if self.env.obs_dtype == np.uint8 else torch.float32
        action_shape = (self.env.num_actions,) if self.env.continuous else ()
        rollout = Rollout(
            c.rollout.n_steps,
            c.rollout.n_envs,
            self.env.obs_shape,
            obs_dtype,
            self.device,
            action_shape,
        )
        reset_obs = self.env.reset(seed=c.seed + 1_000_003 * self.resets)
        obs = self.obs_tensor(reset_obs, update=True)
        if self.reward_scaler is not None:
            self.reward_scaler.reset()
        self.resets += 1
        last_time, last_steps = time.perf_counter(), self.steps
        fps = 0.0
        cuda = self.device.type == "cuda"
        timing.CLOCK.start(c.log.phase_times, torch.cuda.synchronize if cuda else None)
        try:
            while self.steps < c.total_steps:
                obs = self.collect(rollout, obs, on_episode)
                with timing.phase("returns"):
                    advantages, returns = self.returns(rollout, obs)
                log_now = (self.updates + 1) % c.log.update_every == 0
                with timing.phase("update"):
                    metrics = self.update(rollout, advantages, returns, log=log_now)
                episodes_log.write(pending_episodes)
                tracker.episodes(pending_episodes)
                pending_episodes.clear()

                now = time.perf_counter()
                if now - last_time > 0:
                    fps = (self.steps - last_steps) / (now - last_time)
                if log_now:
                    last_time, last_steps = now, self.steps
                    self.check_parameters()
                    row = self._row(metrics, fps, wall())
                    updates_log.write([row])
                    tracker.update(row)
                if self.updates % c.log.checkpoint_every == 0:
                    self.checkpoint(wall())
                    tracker.checkpoint(self.steps)
                if on_progress is not None:
                    mean_recent = float(np.mean(recent)) if recent else math.nan
                    on_progress(
                        Progress(self.steps, c.total_steps, fps, mean_recent, episode_count)
                    )
            final = True
        except Diverged as error:
            episodes_log.write(pending_episodes)
            tracker.episodes(pending_episodes)
            final = True
            self.write_status("diverged", wall(), str(error))
            return RunResult("diverged", self.steps, str(error))
        finally:
            episodes_log.close()
            updates_log.close()
            tracker.close(final)
            self.env.close()
            self.rule.close()
        self.checkpoint(wall())
        self.write_status("done", wall())
        return RunResult("done", self.steps)

    def _row(self, metrics: dict, fps: float, wall_time: float) -> dict:
        row = {
            "step": self.steps,
            "wall_time": round(wall_time, 3),
            "update": self.updates,
            "fps": round(fps, 1),
        }
        tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
        if tensors:
            values = torch.stack([v.detach().float().cpu() for v in tensors.values()]).tolist()
            row.update(zip(tensors, values))
        row.update({k: v for k, v in metrics.items() if not isinstance(v, torch.Tensor)})
        row.update(self.rule.diagnostics())
        row.update(timing.CLOCK.take())
        return row

    def checkpoint(self, wall_time: float) -> None:
        state = self.state_dict()
        state["wall_time"] = wall_time
        store.save_torch(self.run_dir / "checkpoint.pt", state)
        self.write_status("running", wall_time)

    def write_status(self, state: str, wall_time: float, error: str | None = None) -> None:
        status = store.RunStatus(store.RunState(state), self.steps, error, wall_time)
        store.write_status(self.run_dir, status)


# ---------------------------------------------------------------------------------------------
# entry point used by the CLI and the sweep runner


def config_record(config: RunConfig, axes: dict | None = None) -> dict:
    """config.json: top-level label, variant, env, seed, preset, axes, then config + provenance."""
    from kfac_bench.provenance import provenance

    return {
        "label": config.label,
        "variant": config.variant,
        "env": config.env,
        "seed": config.seed,
        "preset": config.preset,
        "axes": dict(axes or {}),
        **{key: value for key, value in (axes or {}).items()},
        "config": config_mod.to_dict(config),
        "provenance": provenance(str(resolve_device(config.device))),
    }


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    axes: dict | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Run (or resume, or skip) one training run in ``run_dir``. See the module docstring.

    Everything that can fail on bad settings (the saved config, the status, the env, policy and
    update rule) is checked before the directory is created or locked; a directory this call
    created is removed again if the first write fails. Raises store.RunDirError (a damaged or
    foreign directory, or one locked by another process) without touching the directory."""
    run_dir = Path(run_dir)
    status = store.check_run_dir(run_dir, config)
    if status is not None and status.final:
        return RunResult(f"already-{status.state.value}", status.steps, status.error)
    trainer = Trainer(config, run_dir)
    record = config_record(config, axes)  # after the trainer has set the thread count it records
    try:
        with store.claimed(run_dir):
            status = store.check_run_dir(run_dir, config)  # again, now that it is ours
            if status is not None and status.final:
                return RunResult(f"already-{status.state.value}", status.steps, status.error)
            state = store.begin(run_dir, record)
            try:
                if state is not None:
                    trainer.load_state_dict(state)
                trainer.write_status("running", trainer.wall_offset)
                return trainer.run(on_progress)
            except (KeyboardInterrupt, store.RunDirError):
                raise
            except Exception as error:
                store.mark_failed(run_dir, f"{type(error).__name__}: {error}", trainer.steps)
                raise
    finally:
        trainer.env.close()
        trainer.rule.close()
