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

Every rule works with Categorical and diagonal-Gaussian policies alike: it only asks the policy's
distribution (``ActorCritic.distribution``, ``rl/distributions.py``) for log-probabilities,
entropies and KLs. Under ``optim.lr_schedule = "kl-adaptive"`` the rule measures the KL after
every update and moves its lr (``rl/stepsize.py``).
"""

from __future__ import annotations

import torch

import variants
from kfac_bench import timing
from kfac_bench.config import RunConfig
from kfac_bench.curvature import KFAC, KfacError
from kfac_bench.rl.distributions import LOG_STD_FISHER
from kfac_bench.rl.losses import (
    empirical_fisher_loss,
    fisher_loss,
    training_loss,
    value_error,
    value_fisher_loss,
)
from kfac_bench.rl.policies import ActorCritic
from kfac_bench.rl.rule_base import (  # noqa: F401  (re-exported: the names callers use)
    Batch,
    Diverged,
    Metrics,
    UpdateRule,
    check_finite,
    clip_gradients,
    empty_metrics,
    first_order_optimizer,
    global_grad_norm,
    lr_at,
    schedule_fraction,
    set_lr,
)

# ---------------------------------------------------------------------------------------------


class AcktrRule(UpdateRule):
    """Fisher pass → training loss backward → K-FAC step (→ the separate critic's steps).

    A separate critic (``optim.critic``) is fitted ``optim.critic_steps`` times per batch towards
    the batch's returns: ``separate-adam`` with Adam on vf_coef·value_loss (its first step on the
    gradient of the joint backward), ``separate-kfac`` with its own K-FAC (``critic_kfac.*``, lr
    ``optim.critic_lr``) on value_loss, each step with the Gauss-Newton Fisher pass of
    :func:`value_fisher_loss` (openai/baselines ``acktr/value_functions.py``: lr 1e-3, kl_clip
    0.3, damping 0.1, decay 0.95, 25 steps per batch). A Gaussian policy's log σ is stepped by its
    exact Fisher (``policy.log_std_update = "fisher"``) or by its plain gradient (``"sgd"``)."""

    def __init__(self, policy: ActorCritic, config: RunConfig) -> None:
        super().__init__(policy, config)
        self.separate = config.optim.critic != "shared"
        log_std = policy.log_std_parameter
        exact, plain = {}, []
        if log_std is not None:
            if config.policy.log_std_update == "fisher":
                exact = {log_std: LOG_STD_FISHER}
            else:
                plain = [log_std]
        variant = variants.get(config.variant)
        self.kfac = KFAC(
            policy.kfac_module() if self.separate else policy,
            variant,
            config.kfac,
            lr=config.optim.lr,
            cold_clip=config.optim.max_grad_norm,
            exact_diagonal=exact,
            plain=plain,
        )
        self.optimizer = self.kfac
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.critic_kfac: KFAC | None = None
        if config.optim.critic == "separate-adam":
            self.critic_optimizer = torch.optim.Adam(
                policy.critic_parameters(), lr=config.optim.critic_lr, fused=True
            )
        elif config.optim.critic == "separate-kfac":
            self.critic_kfac = KFAC(
                policy.critic,
                variant,
                config.critic_kfac,
                lr=config.optim.critic_lr,
                timed=False,  # its whole fit is the "critic" phase
            )
        self.actor_params = set(policy.actor_parameters())

    def update(self, batch: Batch, steps_done: int, log: bool) -> Metrics:
        c, kfac = self.config, self.kfac
        lr = self.lr_now(steps_done)
        for group in kfac.param_groups:
            group["lr"] = lr
            if c.kfac.kl_clip_schedule == "linear":
                group["kl_clip"] = c.kfac.kl_clip * schedule_fraction(c, steps_done)

        with timing.phase("fisher"), kfac.fisher_pass() as fisher:
            head, values = self.policy(batch.obs)
            dist = self.policy.distribution(head)
            terms = training_loss(dist, values, batch.actions, batch.advantages, batch.returns, c)
            if c.kfac.fisher_type == "empirical":
                fisher.backward(empirical_fisher_loss(terms, c, not self.separate))
            else:
                vf_coef = c.loss.vf_fisher_coef
                fisher.backward(
                    fisher_loss(dist, values, batch.actions, vf_coef, not self.separate)
                )
        check_finite(terms.total, self.updates)
        kfac.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        kfac.backward(terms.total, self.policy.parameters())  # reuses the statistics' patch rows

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
        metrics["stats_staleness"] = info.stats_staleness
        with timing.phase("critic"):
            if self.critic_optimizer is not None:
                self.critic_optimizer.step()
                self.fit_critic(batch.obs, batch.returns, c.optim.critic_steps - 1)
            elif self.critic_kfac is not None:
                self.fit_critic_kfac(batch.obs, batch.returns, c.optim.critic_steps)
        self.updates += 1
        if self.kl_wanted(log):
            metrics["kl"] = self._measured_kl(batch.obs, terms.dist)
        if log:
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

    def fit_critic_kfac(self, obs: torch.Tensor, returns: torch.Tensor, steps: int) -> None:
        """``steps`` K-FAC steps of the separate value network on value_loss(V(s), R) (class
        docstring); obs (B, *obs_shape), returns (B,) fixed for the batch. The gradient the joint
        backward left on the critic is dropped first: this fit owns the critic's steps."""
        critic_kfac = self.critic_kfac
        assert critic_kfac is not None
        for _ in range(steps):
            with critic_kfac.fisher_pass() as fisher:
                values = self.policy.critic_value(obs)
                fisher.backward(value_fisher_loss(values))
            loss = value_error(values, returns, self.config)
            check_finite(loss, self.updates)
            critic_kfac.zero_grad(set_to_none=True)
            loss.backward()
            try:
                critic_kfac.step()
            except KfacError as error:
                raise Diverged(f"critic: {error}") from error

    def state_dict(self) -> dict:
        critic = self.critic_optimizer and self.critic_optimizer.state_dict()
        if self.critic_kfac is not None:
            critic = self.critic_kfac.state_dict()
        return {
            "optimizer": self.kfac.state_dict(),
            "critic_optimizer": critic,
            "stepsize": self._stepsize_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.kfac.load_state_dict(state["optimizer"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.critic_kfac is not None:
            self.critic_kfac.load_state_dict(state["critic_optimizer"])
        self._load_stepsize(state)

    def diagnostic_columns(self) -> list[str]:
        if not self.config.log.diagnostics:
            return []
        keys = ("A_trace", "G_trace", "A_cond", "G_cond", "A_clipped", "G_clipped")
        return [f"diag/{name}/{k}" for name in self.kfac.layers for k in keys]

    def diagnostics(self) -> dict[str, float]:
        return self.kfac.diagnostics() if self.config.log.diagnostics else {}

    def close(self) -> None:
        self.kfac.close()
        if self.critic_kfac is not None:
            self.critic_kfac.close()


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
        lr = self.lr_now(steps_done)
        set_lr(self.optimizer, lr)
        head, values = self.policy(batch.obs)
        dist = self.policy.distribution(head)
        terms = training_loss(dist, values, batch.actions, batch.advantages, batch.returns, c)
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
        if self.kl_wanted(log):
            metrics["kl"] = self._measured_kl(batch.obs, terms.dist)
        return metrics


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
        lr = self.lr_now(steps_done)
        set_lr(self.optimizer, lr)
        clip = p.clip_range
        if p.clip_range_schedule == "linear":
            clip *= schedule_fraction(c, steps_done)
        with torch.no_grad():
            old_head, _ = self.policy(batch.obs)
            old_dist = self.policy.distribution(old_head).detach()
            old_log_prob = old_dist.log_prob(batch.actions)

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
        if self.kl_wanted(log):
            metrics["kl"] = self._measured_kl(batch.obs, old_dist)
        return metrics

    def minibatch_loss(
        self, batch: Batch, old_log_prob: torch.Tensor, idx: torch.Tensor, clip: float
    ) -> tuple[torch.Tensor, ...]:
        """(loss, L_clip, L_value, H, log r) on the rows ``idx`` (class docstring)."""
        c = self.config
        head, values = self.policy(batch.obs[idx])
        dist = self.policy.distribution(head)
        log_prob = dist.log_prob(batch.actions[idx])
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
        entropy = dist.entropy().mean()
        loss = policy_loss + c.loss.vf_coef * value_loss - c.loss.ent_coef * entropy
        return loss, policy_loss, value_loss, entropy, log_ratio


RULES: dict[str, type[UpdateRule]] = {"acktr": AcktrRule, "a2c": A2cRule, "ppo": PpoRule}


def build_update_rule(policy: ActorCritic, config: RunConfig) -> UpdateRule:
    """The rule for ``config.optim.algo``."""
    return RULES[config.optim.algo](policy, config)
