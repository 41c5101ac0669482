"""The losses every update rule shares: the Fisher pass's loss and the actor-critic training loss.

Shapes: ``logits`` (B, A), ``values`` (B,), ``actions`` (B,) long, ``advantages``/``returns`` (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kfac_bench.config import RunConfig


def fisher_loss(logits, values, actions, vf_fisher_coef: float, include_value: bool):
    """mean log π(a) [− vf_fisher_coef · mean((v − stopgrad(v + ε))²)], ε ~ N(0, 1).

    openai/baselines ``baselines/acktr/acktr.py`` lines 36, 48-51. Per-example derivatives:
    onehot(a) − p at the logits, 2·vf_fisher_coef·ε at the value (the sign of either term does not
    change the G statistics; REFERENCES.md §7.4)."""
    log_probs = F.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1)
    loss = log_probs.mean()
    if include_value and vf_fisher_coef:
        noisy = (values + torch.randn_like(values)).detach()
        loss = loss - vf_fisher_coef * (values - noisy).pow(2).mean()
    return loss


@dataclass
class LossTerms:
    """The training loss and its parts (tensors attached to the graph where it matters)."""

    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    log_probs_all: torch.Tensor  # (B, A) log π(·|s), for the KL after the step


def value_error(values: torch.Tensor, returns: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """mean((v − R)²), or ½ of it under ``loss.value_loss = "half-mse"``."""
    error = (values - returns).pow(2).mean()
    return 0.5 * error if config.loss.value_loss == "half-mse" else error


def entropy_of(log_probs_all: torch.Tensor) -> torch.Tensor:
    """Mean categorical entropy −Σ_a p log p over the batch; log_probs_all (B, A)."""
    return -(log_probs_all.exp() * log_probs_all).sum(-1).mean()


def training_loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    config: RunConfig,
) -> LossTerms:
    """−mean(Â·log π(a)) + vf_coef·value_loss − ent_coef·H (openai/baselines acktr.py:40-45)."""
    if config.rollout.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_probs_all = F.log_softmax(logits, dim=-1)
    log_probs = log_probs_all.gather(1, actions[:, None]).squeeze(1)
    entropy = entropy_of(log_probs_all)
    policy_loss = -(advantages.detach() * log_probs).mean()
    value_loss = value_error(values, returns, config)
    total = policy_loss + config.loss.vf_coef * value_loss - config.loss.ent_coef * entropy
    return LossTerms(total, policy_loss, value_loss, entropy, log_probs_all)


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


def categorical_kl(old_log_probs: torch.Tensor, new_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean KL(π_old ‖ π_new) over the batch; both (B, A) log-probabilities."""
    return (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1).mean()
