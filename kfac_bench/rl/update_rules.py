"""Update rules: what turns one collected batch into a parameter update.

The trainer (``trainer.py``) collects a batch, computes returns and hands a :class:`Batch` to
``rule.update``; it never asks which rule it holds. One rule per ``optim.algo``:

- :class:`AcktrRule` — ACKTR: Fisher pass, training-loss backward, K-FAC trust-region step
  (openai/baselines ``baselines/acktr/acktr.py``; the curvature core in ``kfac_bench/curvature``).
- :class:`A2cRule` — A2C: one backward of the training loss, gradient-norm clip, RMSprop with TF1
  semantics (openai/baselines ``baselines/a2c/a2c.py``; ``rl/optimizers.py``).
- :class:`PpoRule` — PPO-clip: ``ppo.n_epochs`` passes of shuffled minibatches over the batch with
  the clipped surrogate (Schulman et al. 2017; DLR-RM/stable-baselines3 ``ppo/ppo.py``
  ``PPO.train``; vwxyzjn/cleanrl ``ppo.py`` / ``ppo_atari.py``).

Every rule returns the same metric dict (the ``updates.csv`` schema, ``store.UPDATE_COLUMNS``);
entries a rule does not produce are None. ``kl`` is always the measured policy KL(π_old ‖ π_new)
on the batch for the update actually applied, so it compares like with like across rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import variants
from kfac_bench.config import RunConfig
from kfac_bench.curvature import KFAC, KfacError
from kfac_bench.rl.losses import (
    categorical_kl,
    empirical_fisher_loss,
    entropy_of,
    fisher_loss,
    training_loss,
    value_error,
)
from kfac_bench.rl.optimizers import RMSpropTF
from kfac_bench.rl.policies import ActorCritic

Metrics = dict[str, Any]  # tensors (read once per logged row), floats or None


class Diverged(RuntimeError):
    """Training produced a non-finite loss, factor or parameter."""


@dataclass
class Batch:
    """One on-policy batch, flattened over (time, env): B = n_steps · n_envs rows."""

    obs: torch.Tensor  # (B, *obs_shape)
    actions: torch.Tensor  # (B,) long
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    values: torch.Tensor  # (B,) V(s) when the batch was collected


def schedule_fraction(config: RunConfig, steps_done: int) -> float:
    """1 − steps/total, floored at 0: the linear-decay factor (openai/baselines ``Scheduler``;
    SB3 ``progress_remaining``)."""
    return max(0.0, 1.0 - steps_done / config.total_steps)


def lr_at(config: RunConfig, steps_done: int) -> float:
    """Scheduled lr: constant, or linear decay per env step."""
    if config.optim.lr_schedule == "linear":
        return config.optim.lr * schedule_fraction(config, steps_done)
    return config.optim.lr


def empty_metrics(lr: float) -> Metrics:
    keys = ("policy_loss", "value_loss", "entropy", "grad_norm", "kl", "predicted_kl")
    keys += ("predicted_kl_total", "trust_q", "nu", "inverse_staleness", "clip_fraction")
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

    def update(self, batch: Batch, steps_done: int, log: bool) -> Metrics:
        raise NotImplementedError

    def _measured_kl(self, obs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            new_logits, _ = self.policy(obs)
            return categorical_kl(old_log_probs, F.log_softmax(new_logits, dim=-1))

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "critic_optimizer": None}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

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


# ---------------------------------------------------------------------------------------------


class AcktrRule(UpdateRule):
    """Fisher pass → training loss backward → K-FAC step (→ separate critic's Adam steps)."""

    def __init__(self, policy: ActorCritic, config: RunConfig) -> None:
        super().__init__(policy, config)
        self.separate = config.optim.critic == "separate-adam"
        self.kfac = KFAC(
            policy.kfac_module() if self.separate else policy,
            variants.get(config.variant),
            config.kfac,
            lr=config.optim.lr,
            cold_clip=config.optim.max_grad_norm,
        )
        self.optimizer = self.kfac
        self.critic_optimizer: torch.optim.Optimizer | None = None
        if self.separate:
            self.critic_optimizer = torch.optim.Adam(
                policy.critic_parameters(), lr=config.optim.critic_lr, fused=True
            )
        self.actor_params = set(policy.actor_parameters())

    def update(self, batch: Batch, steps_done: int, log: bool) -> Metrics:
        c, kfac = self.config, self.kfac
        lr = lr_at(c, steps_done)
        for group in kfac.param_groups:
            group["lr"] = lr
            if c.kfac.kl_clip_schedule == "linear":
                group["kl_clip"] = c.kfac.kl_clip * schedule_fraction(c, steps_done)

        with kfac.fisher_pass() as fisher:
            logits, values = self.policy(batch.obs)
            terms = training_loss(logits, values, batch.actions, batch.advantages, batch.returns, c)
            if c.kfac.fisher_type == "empirical":
                fisher.backward(empirical_fisher_loss(terms, c, not self.separate))
            else:
                vf_coef = c.loss.vf_fisher_coef
                fisher.backward(
                    fisher_loss(logits, values, batch.actions, vf_coef, not self.separate)
                )
        check_finite(terms.total, self.updates)
        kfac.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        terms.total.backward()

        metrics = empty_metrics(lr)
        metrics.update(
            policy_loss=terms.policy.detach(),
            value_loss=terms.value.detach(),
            entropy=terms.entropy.detach(),
        )
        if log:
            metrics["grad_norm"] = global_grad_norm(list(self.policy.parameters()))
        try:
            info = kfac.step()
        except KfacError as error:
            raise Diverged(str(error)) from error
        metrics.update(nu=info.nu, trust_q=info.q, inverse_staleness=info.staleness)
        if self.critic_optimizer is not None:
            self.critic_optimizer.step()
            self.fit_critic(batch.obs, batch.returns, c.optim.critic_steps - 1)
        self.updates += 1
        if log:
            metrics["kl"] = self._measured_kl(batch.obs, terms.log_probs_all.detach())
            metrics["predicted_kl"] = kfac.applied_step_kl(self.actor_params)
            metrics["predicted_kl_total"] = kfac.applied_step_kl()
        return metrics

    def fit_critic(self, obs: torch.Tensor, returns: torch.Tensor, steps: int) -> None:
        """``steps`` more full-batch Adam steps of the separate critic towards fixed ``returns``.

        obs: (B, *obs_shape); returns: (B,) — the targets computed before the update. Loss
        vf_coef · mean((V(s) − R)²) (½ of it under ``half-mse``), as in ``training_loss``. The
        critic is fitted several times per batch as the value function of ACKTR's
        continuous-control code is (openai/baselines ``acktr/value_functions.py``
        ``NeuralNetValueFunction.fit``: 25 K-FAC steps per batch there)."""
        assert self.critic_optimizer is not None
        for _ in range(steps):
            loss = value_error(self.policy.critic_value(obs), returns, self.config)
            self.critic_optimizer.zero_grad(set_to_none=True)
            (self.config.loss.vf_coef * loss).backward()
            self.critic_optimizer.step()

    def state_dict(self) -> dict:
        critic = self.critic_optimizer and self.critic_optimizer.state_dict()
        return {"optimizer": self.kfac.state_dict(), "critic_optimizer": critic}

    def load_state_dict(self, state: dict) -> None:
        self.kfac.load_state_dict(state["optimizer"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def diagnostic_columns(self) -> list[str]:
        if not self.config.log.diagnostics:
            return []
        keys = ("A_trace", "G_trace", "A_cond", "G_cond", "A_clipped", "G_clipped")
        return [f"diag/{name}/{k}" for name in self.kfac.layers for k in keys]

    def diagnostics(self) -> dict[str, float]:
        return self.kfac.diagnostics() if self.config.log.diagnostics else {}

    def close(self) -> None:
        self.kfac.close()


class A2cRule(UpdateRule):
    """One step of the training loss: backward, clip ‖g‖ to ``optim.max_grad_norm``, optimiser.

    openai/baselines ``baselines/a2c/a2c.py`` (``Model.train``): loss pg − ent·H + vf·mse, global
    norm clip 0.5, TF RMSprop (α 0.99, ε 1e-5), lr 7e-4 with linear decay."""

    def __init__(self, policy: ActorCritic, config: RunConfig) -> None:
        super().__init__(policy, config)
        self.params = list(policy.parameters())
        self.optimizer = first_order_optimizer(self.params, config)

    def update(self, batch: Batch, steps_done: int, log: bool) -> Metrics:
        c = self.config
        lr = lr_at(c, steps_done)
        set_lr(self.optimizer, lr)
        logits, values = self.policy(batch.obs)
        terms = training_loss(logits, values, batch.actions, batch.advantages, batch.returns, c)
        check_finite(terms.total, self.updates)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        grad_norm = clip_gradients(self.params, c.optim.max_grad_norm, log)
        self.optimizer.step()
        self.updates += 1
        metrics = empty_metrics(lr)
        metrics.update(
            policy_loss=terms.policy.detach(),
            value_loss=terms.value.detach(),
            entropy=terms.entropy.detach(),
            grad_norm=grad_norm,
        )
        if log:
            metrics["kl"] = self._measured_kl(batch.obs, terms.log_probs_all.detach())
        return metrics


def clip_gradients(
    params: list[torch.nn.Parameter], max_norm: float | None, want_norm: bool
) -> torch.Tensor | None:
    """Clip the global gradient norm (when ``max_norm`` is set); returns the pre-clip norm."""
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return global_grad_norm(params) if want_norm else None


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's L_clip = −mean(min(r·Â, clip(r, 1 − ε, 1 + ε)·Â)), r = exp(log_ratio); all (B,).

    Schulman et al. 2017 eq. (7), as a loss to minimise."""
    ratio = log_ratio.exp()
    return -torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages).mean()


class PpoRule(UpdateRule):
    """PPO-clip over ``ppo.n_epochs`` epochs of shuffled minibatches of ``ppo.minibatch_size``.

    Per minibatch (SB3 ``PPO.train``; CleanRL ``ppo.py`` lines "Optimizing the policy and value
    network"), with r = π(a|s)/π_old(a|s) and ε = ``ppo.clip_range`` (× the lr factor under the
    linear clip schedule):

        Â       ← (Â − mean Â)/(std Â + 1e-8) over the minibatch, if rollout.normalize_advantages
        L_clip   = −mean(min(r·Â, clip(r, 1 − ε, 1 + ε)·Â))
        L_value  = mean((V − R)²), or with ``ppo.clip_value`` = c the CleanRL clipped form
                   mean(max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²)); ½ of it under half-mse
        loss     = L_clip + vf_coef·L_value − ent_coef·H
    then ‖g‖ clipped to ``optim.max_grad_norm`` and one Adam step. With ``ppo.target_kl`` set, the
    epochs stop at the first minibatch whose approximate KL mean((r − 1) − log r) exceeds
    1.5·target_kl, before its step (SB3). π_old is the policy that collected the batch.
    """

    def __init__(self, policy: ActorCritic, config: RunConfig) -> None:
        super().__init__(policy, config)
        self.params = list(policy.parameters())
        self.optimizer = first_order_optimizer(self.params, config)

    def update(self, batch: Batch, steps_done: int, log: bool) -> Metrics:
        c, p = self.config, self.config.ppo
        lr = lr_at(c, steps_done)
        set_lr(self.optimizer, lr)
        clip = p.clip_range
        if p.clip_range_schedule == "linear":
            clip *= schedule_fraction(c, steps_done)
        with torch.no_grad():
            old_logits, _ = self.policy(batch.obs)
            old_log_probs_all = F.log_softmax(old_logits, dim=-1)
            old_log_prob = old_log_probs_all.gather(1, batch.actions[:, None]).squeeze(1)

        n = batch.obs.shape[0]
        losses: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        last_epoch_clipped: list[torch.Tensor] = []
        for _ in range(p.n_epochs):
            clipped: list[torch.Tensor] = []
            stop = False
            for idx in torch.randperm(n, device=batch.obs.device).split(p.minibatch_size):
                terms = self.minibatch_loss(batch, old_log_prob, idx, clip)
                loss, policy_loss, value_loss, entropy, log_ratio = terms
                check_finite(loss, self.updates)
                if p.target_kl is not None:
                    approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()
                    if bool(approx_kl > 1.5 * p.target_kl):
                        stop = True
                        break
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = clip_gradients(self.params, c.optim.max_grad_norm, log)
                self.optimizer.step()
                clipped.append(((log_ratio.exp() - 1).abs() > clip).float().mean().detach())
                losses.append(torch.stack([policy_loss, value_loss, entropy]).detach())
                if norm is not None:
                    norms.append(norm.detach())
            last_epoch_clipped = clipped or last_epoch_clipped
            if stop:
                break
        self.updates += 1

        metrics = empty_metrics(lr)
        if losses:
            policy_loss, value_loss, entropy = torch.stack(losses).mean(0)
            metrics.update(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy)
        if norms:
            metrics["grad_norm"] = torch.stack(norms).mean()
        if last_epoch_clipped:
            metrics["clip_fraction"] = torch.stack(last_epoch_clipped).mean()
        if log:
            metrics["kl"] = self._measured_kl(batch.obs, old_log_probs_all)
        return metrics

    def minibatch_loss(
        self, batch: Batch, old_log_prob: torch.Tensor, idx: torch.Tensor, clip: float
    ) -> tuple[torch.Tensor, ...]:
        """(loss, L_clip, L_value, H, log r) on the rows ``idx`` (class docstring)."""
        c = self.config
        logits, values = self.policy(batch.obs[idx])
        log_probs_all = F.log_softmax(logits, dim=-1)
        log_prob = log_probs_all.gather(1, batch.actions[idx, None]).squeeze(1)
        advantages = batch.advantages[idx]
        if c.rollout.normalize_advantages and len(idx) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_ratio = log_prob - old_log_prob[idx]
        policy_loss = clipped_surrogate(log_ratio, advantages, clip)
        returns = batch.returns[idx]
        if c.ppo.clip_value is None:
            value_loss = value_error(values, returns, c)
        else:
            old = batch.values[idx]
            clipped = old + (values - old).clamp(-c.ppo.clip_value, c.ppo.clip_value)
            error = torch.max((values - returns).pow(2), (clipped - returns).pow(2)).mean()
            value_loss = 0.5 * error if c.loss.value_loss == "half-mse" else error
        entropy = entropy_of(log_probs_all)
        loss = policy_loss + c.loss.vf_coef * value_loss - c.loss.ent_coef * entropy
        return loss, policy_loss, value_loss, entropy, log_ratio


RULES: dict[str, type[UpdateRule]] = {"acktr": AcktrRule, "a2c": A2cRule, "ppo": PpoRule}


def build_update_rule(policy: ActorCritic, config: RunConfig) -> UpdateRule:
    """The rule for ``config.optim.algo``."""
    return RULES[config.optim.algo](policy, config)
