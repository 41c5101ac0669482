"""The losses every update rule shares: the Fisher pass's loss and the actor-critic training loss.

Shapes: ``dist`` an action distribution over B states (``rl/distributions.py``; a bare logits
tensor (B, A) is taken as Categorical), ``values`` (B,), ``actions`` (B,) long or (B, A) float,
``advantages``/``returns`` (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kfac_bench.config import RunConfig
from kfac_bench.rl.distributions import ActionDistribution, as_distribution


def fisher_loss(dist, values, actions, vf_fisher_coef: float, include_value: bool):
    """mean log π(a) [− vf_fisher_coef · mean((v − stopgrad(v + ε))²)], ε ~ N(0, 1).

    openai/baselines ``baselines/acktr/acktr.py`` lines 36, 48-51 (and ``acktr/policies.py``
    ``surr_sampled`` for the Gaussian). ``actions`` are the batch's on-policy samples. Per-example
    derivatives: onehot(a) − p at the logits, or (a − μ)/σ² at a Gaussian mean; 2·vf_fisher_coef·ε
    at the value (the sign of either term does not change the G statistics; REFERENCES.md §7.4)."""
    loss = as_distribution(dist).log_prob(actions).mean()
    if include_value and vf_fisher_coef:
        noisy = (values + torch.randn_like(values)).detach()
        loss = loss - vf_fisher_coef * (values - noisy).pow(2).mean()
    return loss


def value_fisher_loss(values: torch.Tensor) -> torch.Tensor:
    """−mean((v − stopgrad(v + ε))²), ε ~ N(0, 1): the Gauss-Newton Fisher of a unit-variance
    regression, what a separate value network's own K-FAC collects (openai/baselines
    ``acktr/value_functions.py`` ``loss_sampled``); per-example derivative 2ε at the value."""
    noisy = (values + torch.randn_like(values)).detach()
    return -(values - noisy).pow(2).mean()


@dataclass
class LossTerms:
    """The training loss and its parts (tensors attached to the graph where it matters)."""

    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    dist: ActionDistribution  # π(·|s) before the step, detached: the KL after the step


def value_error(values: torch.Tensor, returns: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """mean((v − R)²), or ½ of it under ``loss.value_loss = "half-mse"``."""
    error = (values - returns).pow(2).mean()
    return 0.5 * error if config.loss.value_loss == "half-mse" else error


def training_loss(
    dist: torch.Tensor | ActionDistribution,
    values: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    config: RunConfig,
) -> LossTerms:
    """−mean(Â·log π(a)) + vf_coef·value_loss − ent_coef·H (openai/baselines acktr.py:40-45)."""
    dist = as_distribution(dist)
    if config.rollout.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    entropy = dist.entropy().mean()
    policy_loss = -(advantages.detach() * dist.log_prob(actions)).mean()
    value_loss = value_error(values, returns, config)
    total = policy_loss + config.loss.vf_coef * value_loss - config.loss.ent_coef * entropy
    return LossTerms(total, policy_loss, value_loss, entropy, dist.detach())


def empirical_fisher_loss(terms: LossTerms, config: RunConfig, include_value: bool) -> torch.Tensor:
    """``kfac.fisher_type = "empirical"``: the training loss's own data terms,
    −mean(Â·log π(a)) [+ vf_coef·value_loss], so the Fisher pass's per-example derivatives are
    those of ℓ_n = −Â_n log π(a_n) + vf_coef·(v_n − R_n)² (the "empirical Fisher" of
    ikostrikov/pytorch-a2c-ppo-acktr-gail#222). The entropy bonus is a regulariser of the
    whole policy, not a per-example data term, and is left out; ``include_value`` is False for a
    separate critic (as in :func:`fisher_loss`)."""
    if include_value:
        return terms.policy + config.loss.vf_coef * terms.value
    return terms.policy


def mean_kl(old: ActionDistribution, new: ActionDistribution) -> torch.Tensor:
    """Mean KL(π_old ‖ π_new) over the batch."""
    return new.kl_from(old).mean()
