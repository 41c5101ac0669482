"""What every update rule shares: the batch record, the metric schema, schedules and the base
class :class:`UpdateRule` (the rules themselves are in ``update_rules.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kfac_bench.config import RunConfig
from kfac_bench.curvature import KFAC
from kfac_bench.rl.distributions import ActionDistribution
from kfac_bench.rl.losses import mean_kl
from kfac_bench.rl.optimizers import RMSpropTF
from kfac_bench.rl.policies import ActorCritic
from kfac_bench.rl.stepsize import KlAdaptiveStepsize

Metrics = dict[str, Any]  # tensors (read once per logged row), floats or None


class Diverged(RuntimeError):
    """Training produced a non-finite loss, factor or parameter."""


@dataclass
class Batch:
    """One on-policy batch, flattened over (time, env): B = n_steps · n_envs rows."""

    obs: torch.Tensor  # (B, *obs_shape)
    actions: torch.Tensor  # (B,) long, or (B, A) float (unclipped Gaussian samples)
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    values: torch.Tensor  # (B,) V(s) when the batch was collected


def schedule_fraction(config: RunConfig, steps_done: int) -> float:
    """1 − steps/total, floored at 0: the linear-decay factor (openai/baselines ``Scheduler``;
    SB3 ``progress_remaining``)."""
    return max(0.0, 1.0 - steps_done / config.total_steps)


def lr_at(config: RunConfig, steps_done: int) -> float:
    """Scheduled lr: constant, or linear decay per env step (kl-adaptive starts at optim.lr)."""
    if config.optim.lr_schedule == "linear":
        return config.optim.lr * schedule_fraction(config, steps_done)
    return config.optim.lr


def empty_metrics(lr: float) -> Metrics:
    keys = ("policy_loss", "value_loss", "entropy", "grad_norm", "kl", "predicted_kl")
    keys += ("predicted_kl_total", "trust_q", "nu", "inverse_staleness", "stats_staleness")
    keys += ("clip_fraction",)
    return {**dict.fromkeys(keys), "lr": lr}


def global_grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in params if p.grad is not None))


def check_finite(loss: torch.Tensor, updates_done: int) -> None:
    if not torch.isfinite(loss):
        raise Diverged(f"non-finite loss at update {updates_done + 1}")


class UpdateRule:
    """Base: the policy, its optimiser(s) and the metric schema. Subclasses define ``update``."""

    kfac: KFAC | None = None

    def __init__(self, policy: ActorCritic, config: RunConfig) -> None:
        self.policy = policy
        self.config = config
        self.updates = 0
        o = config.optim
        self.stepsize = (
            KlAdaptiveStepsize(o.lr, o.adaptive_target_kl, o.adaptive_factor)
            if o.lr_schedule == "kl-adaptive"
            else None
        )

    def update(self, batch: Batch, steps_done: int, log: bool) -> Metrics:
        raise NotImplementedError

    def lr_now(self, steps_done: int) -> float:
        """The lr of this update: the adaptive stepsize, or the schedule's value."""
        return self.stepsize.lr if self.stepsize is not None else lr_at(self.config, steps_done)

    def kl_wanted(self, log: bool) -> bool:
        """Whether this update measures its KL (logged rows, and every update when adaptive)."""
        return log or self.stepsize is not None

    def _measured_kl(self, obs: torch.Tensor, old: ActionDistribution) -> torch.Tensor:
        """KL(π_old ‖ π_new) on ``obs`` after the step; moves the adaptive stepsize if any."""
        with torch.no_grad():
            head, _ = self.policy(obs)
            kl = mean_kl(old, self.policy.distribution(head))
        if self.stepsize is not None:
            self.stepsize.observe(float(kl))
        return kl

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "critic_optimizer": None,
            "stepsize": self._stepsize_state(),
        }

    def _stepsize_state(self) -> dict | None:
        return None if self.stepsize is None else self.stepsize.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_stepsize(state)

    def _load_stepsize(self, state: dict) -> None:
        if self.stepsize is not None:
            self.stepsize.load_state_dict(state["stepsize"])

    def diagnostic_columns(self) -> list[str]:
        return []

    def diagnostics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def first_order_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    """The controls' optimiser (``optim.first_order``)."""
    o = config.optim
    if o.first_order == "rmsprop-tf":
        return RMSpropTF(params, lr=o.lr, alpha=o.rmsprop_alpha, eps=o.rmsprop_eps)
    if o.first_order == "rmsprop-torch":
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.rmsprop_alpha, eps=o.rmsprop_eps)
    return torch.optim.Adam(params, lr=o.lr, eps=o.adam_eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(
    params: list[torch.nn.Parameter], max_norm: float | None, want_norm: bool
) -> torch.Tensor | None:
    """Clip the global gradient norm (when ``max_norm`` is set); returns the pre-clip norm."""
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return global_grad_norm(params) if want_norm else None
