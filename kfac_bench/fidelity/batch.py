"""The measured batch: which policy, which observations, which sampled actions and noise.

The policy is a finished run's (``checkpoint.pt``: ``"policy"`` state dict and ``"config"``) or,
without a checkpoint, the *initial* policy of a run of the env family's default config: built
after ``torch.manual_seed(seed)`` exactly as the trainer builds it, so ``--seed s`` measures the
network that run ``s`` starts from.

Observations come from rolling that policy in ``make_env(env, n_envs)`` (the config's
``rollout.n_envs``, at most B) for ⌈B / n_envs⌉ steps from ``reset(seed)``, actions sampled from
the policy (a seeded ``torch.Generator``), in the trainer's time-major order; the first B rows
are kept. The value term's ε ~ N(0, 1) is drawn once from the same generator. A Gaussian policy's
actions are μ + σ·z with z from that generator (unclipped, as the trainer stores them; the env
clips). Under ``normalize.obs`` the policy sees normalised observations: a checkpoint's frozen
statistics, or for the initial policy fresh statistics updated with each step's observations
before normalising them, as the trainer's first batch is. Reward scaling (``normalize.reward``)
is not applied, so with it the value targets are on the raw reward scale.

The gradient g that all directions precondition is the trainer's training-loss gradient on this
batch (``rl/trainer.py`` ``Trainer.update``): −mean(Â·log π(a)) + vf_coef·value_loss − ent_coef·H,
with the config's returns (n-step bootstrap, or GAE when ``rollout.gae_lambda`` is set; truncated
episodes bootstrapped from V(final_obs)) and advantage normalisation, restricted to the
parameters K-FAC preconditions. The empirical Fisher pass (``kfac.fisher_type = "empirical"``,
:func:`empirical_loss`) back-propagates that loss's data terms on the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kfac_bench import config as config_mod
from kfac_bench import store
from kfac_bench.config import RunConfig
from kfac_bench.fidelity.exact import FisherProblem, action_distribution
from kfac_bench.fidelity.layout import LayerSlot, build_slots, flatten
from kfac_bench.presets import build_config
from kfac_bench.rl.envs import VecEnv
from kfac_bench.rl.losses import empirical_fisher_loss
from kfac_bench.rl.normalize import ObservationNormalizer
from kfac_bench.rl.policies import ActorCritic, build_policy, separate_critic_for
from kfac_bench.rl.returns import gae_advantages, nstep_returns
from kfac_bench.rl.trainer import training_loss as trainer_loss


@dataclass(frozen=True)
class Source:
    """Where the measured policy comes from."""

    config: RunConfig
    checkpoint: Path | None  # checkpoint.pt, or None for the initial policy
    state: dict | None  # the policy's state dict (None: initial policy)
    step: int  # env steps the policy was trained for
    obs_norm: dict | None = None  # the checkpoint's observation statistics (``normalize.obs``)

    @property
    def label(self) -> str:
        return str(self.checkpoint.parent) if self.checkpoint is not None else "initial"


def checkpoint_path(path: Path) -> Path:
    """A run directory or a ``.pt`` file -> the checkpoint file (FileNotFoundError if absent)."""
    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}")
    return file


def load_source(env: str | None, checkpoint: Path | None, seed: int) -> Source:
    """The policy source for ``env`` (family default config) or a run's checkpoint."""
    if checkpoint is None:
        if env is None:
            raise ValueError("give --env (initial policy) or --checkpoint RUN_DIR")
        return Source(build_config(env, seed=seed), None, None, 0)
    file = checkpoint_path(checkpoint)
    state = store.load_checkpoint(file)
    if "policy" not in state or "config" not in state:
        raise ValueError(f"{file} has no 'policy' and 'config' entries")
    config = config_mod.from_dict(state["config"])
    if env is not None and env != config.env:
        raise ValueError(f"--env {env} but the checkpoint was trained on {config.env}")
    steps = int(state.get("steps", 0))
    return Source(config, file, state["policy"], steps, state.get("obs_norm"))


def build_measured_policy(source: Source, env: VecEnv, seed: int, device: torch.device):
    """The float64 policy (initial from ``seed``, or the checkpoint's weights), eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = build_policy(
            env.obs_shape,
            env.num_actions,
            source.config.policy,
            separate_critic=separate_critic_for(source.config),
            continuous=env.continuous,
        )
    if source.state is not None:
        policy.load_state_dict(source.state)
    return policy.to(device=device, dtype=torch.float64).eval()


@dataclass(frozen=True)
class Rollout:
    """B transitions (time-major, flattened): what both Fisher estimates and g are built from."""

    obs: torch.Tensor  # (B, *obs_shape) as the policy sees it (float32 or uint8)
    actions: torch.Tensor  # (B,) long, or (B, A) float for a Gaussian policy
    advantages: torch.Tensor  # (B,) float64, before normalisation
    returns: torch.Tensor  # (B,) float64
    noise: torch.Tensor  # (B,) float64, ε of the value Fisher term


def _sample(policy: ActorCritic, head: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Actions of ``policy.distribution(head)`` drawn from ``generator``: (N,) long or (N, A)."""
    head = head.detach().double().cpu()
    if policy.continuous:
        std = policy.log_std_parameter.detach().double().cpu().exp()
        return head + std * torch.randn(head.shape, generator=generator, dtype=torch.float64)
    probs = torch.softmax(head, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class Rollouts:
    """Consecutive B-transition rollouts of ``policy`` in ``env`` from ``reset(seed)``.

    One seeded ``torch.Generator`` draws the actions step by step and, after each rollout, that
    rollout's noise ε; the env runs on between calls, so call k continues where call k − 1 ended.
    The first call is :func:`collect`.
    """

    def __init__(
        self,
        policy: ActorCritic,
        env: VecEnv,
        config: RunConfig,
        seed: int,
        obs_norm: dict | None = None,
    ) -> None:
        self.policy, self.env, self.config = policy, env, config
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator().manual_seed(seed)
        self.normalizer, self.frozen = None, obs_norm is not None
        if config.normalize.obs:
            self.normalizer = ObservationNormalizer(env.obs_shape, config.normalize.obs_clip)
            if obs_norm is not None:
                self.normalizer.load_state_dict(obs_norm)
        self.obs = self._seen(env.reset(seed=seed), update=True)

    def _seen(self, raw: np.ndarray, update: bool = False) -> torch.Tensor:
        """Raw observations -> what the policy sees (module docstring)."""
        if self.normalizer is not None:
            if update and not self.frozen:
                self.normalizer.update(raw)
            raw = self.normalizer.normalize(raw)
        return torch.as_tensor(raw, device=self.device)

    @torch.no_grad()
    def next(self, batch: int) -> Rollout:
        """Roll ⌈batch / N⌉ steps (N envs) and keep the first ``batch`` transitions."""
        policy, env, device, generator = self.policy, self.env, self.device, self.generator
        n = env.num_envs
        steps = math.ceil(batch / n)
        obs = self.obs
        shape = (steps, n)
        all_obs = torch.zeros((*shape, *env.obs_shape), dtype=obs.dtype, device=device)
        continuous = policy.continuous
        action_shape = (*shape, env.num_actions) if continuous else shape
        actions = torch.zeros(action_shape, dtype=torch.float64 if continuous else torch.long)
        values = torch.zeros(shape, dtype=torch.float64)
        rewards = torch.zeros(shape, dtype=torch.float64)
        terminated = torch.zeros(shape, dtype=torch.bool)
        truncated = torch.zeros(shape, dtype=torch.bool)
        final_values = torch.zeros(shape, dtype=torch.float64)
        for t in range(steps):
            head, value = policy(obs)
            action = _sample(policy, head, generator)
            step = env.step(action.numpy())
            all_obs[t], actions[t], values[t] = obs, action, value.cpu()
            rewards[t] = torch.as_tensor(step.reward, dtype=torch.float64)
            terminated[t] = torch.as_tensor(step.terminated)
            truncated[t] = torch.as_tensor(step.truncated)
            cut = np.flatnonzero(step.truncated & ~step.terminated)
            if cut.size:
                final = self._seen(step.final_obs[cut])
                final_values[t, torch.as_tensor(cut)] = policy(final)[1].cpu()
            obs = self._seen(step.obs, update=True)
        self.obs = obs
        last_value = policy(obs)[1].cpu()
        r = self.config.rollout
        args = (terminated, truncated, final_values, last_value, r.gamma)
        if r.gae_lambda is None:
            returns = nstep_returns(rewards, *args)
            advantages = returns - values
        else:
            advantages, returns = gae_advantages(rewards, values, *args, lam=r.gae_lambda)
        noise = torch.randn(batch, generator=generator, dtype=torch.float64)
        return Rollout(
            obs=all_obs.reshape(-1, *env.obs_shape)[:batch],
            actions=actions.flatten(0, 1)[:batch].to(device),
            advantages=advantages.reshape(-1)[:batch].to(device),
            returns=returns.reshape(-1)[:batch].to(device),
            noise=noise.to(device),
        )


def collect(
    policy: ActorCritic,
    env: VecEnv,
    config: RunConfig,
    batch: int,
    seed: int,
    obs_norm: dict | None = None,
) -> Rollout:
    """Roll ``policy`` for ⌈batch / N⌉ steps of ``env`` (N envs) from ``reset(seed)``; keep the
    first ``batch``."""
    return Rollouts(policy, env, config, seed, obs_norm).next(batch)


def training_loss(policy: nn.Module, rollout: Rollout, config: RunConfig) -> torch.Tensor:
    """The trainer's loss on the batch (``rl/trainer.py`` ``training_loss``)."""
    head, values = policy(rollout.obs)
    dist = policy.distribution(head)
    return trainer_loss(
        dist, values, rollout.actions, rollout.advantages, rollout.returns, config
    ).total


def training_gradient(
    policy: nn.Module, slots: list[LayerSlot], rollout: Rollout, config: RunConfig
) -> torch.Tensor:
    """g (P,) in M order: ∇ of :func:`training_loss` w.r.t. the K-FAC-covered parameters."""
    named = dict(policy.named_parameters())
    keys = [k for slot in slots for k in slot.keys]
    grads = torch.autograd.grad(training_loss(policy, rollout, config), [named[k] for k in keys])
    return flatten(slots, dict(zip(keys, grads)))


def empirical_loss(rollout: Rollout, config: RunConfig, log_std: torch.Tensor | None = None):
    """(head, values) -> the empirical Fisher pass's batch-mean loss on ``rollout``.

    As ``AcktrRule.update`` under ``kfac.fisher_type = "empirical"`` (``rl/update_rules.py``):
    ``rl/losses.py`` ``empirical_fisher_loss`` of the training loss's terms (normalised advantages
    held fixed), −mean(Â·log π(a)) + vf_coef·value_loss, the value term only with a shared critic;
    its per-example terms are ℓ_n = −Â_n log π(a_n|s_n) + vf_coef·(v_n − R_n)² (entropy excluded).
    ``log_std``: a Gaussian policy's log σ (A,), held fixed (None: Categorical logits).
    """
    shared = config.optim.critic == "shared"

    def loss(head: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        r = rollout
        dist = action_distribution(head, log_std)
        terms = trainer_loss(dist, values, r.actions, r.advantages, r.returns, config)
        return empirical_fisher_loss(terms, config, shared)

    return loss


def fisher_problem(policy: nn.Module, rollout: Rollout, config: RunConfig) -> FisherProblem:
    """The comparison's batch: same observations, sampled actions and ε for both sides."""
    log_std = getattr(policy, "log_std_parameter", None)
    return FisherProblem(
        policy=policy,
        slots=build_slots(policy),
        obs=rollout.obs,
        actions=rollout.actions,
        noise=rollout.noise,
        vf_fisher_coef=config.loss.vf_fisher_coef,
        include_value=config.optim.critic == "shared",
        log_std=None if log_std is None else log_std.detach().clone(),
    )


__all__ = [
    "Rollout",
    "Rollouts",
    "Source",
    "build_measured_policy",
    "checkpoint_path",
    "collect",
    "empirical_loss",
    "fisher_problem",
    "load_source",
    "training_gradient",
    "training_loss",
]
