"""The first-order controls: TF-semantics RMSprop, PPO's clipped objective, the rules' structure."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

from kfac_bench.presets import build_config
from kfac_bench.rl.optimizers import RMSpropTF
from kfac_bench.rl.policies import build_policy
from kfac_bench.rl.update_rules import Batch, PpoRule, build_update_rule, clipped_surrogate


def test_rmsprop_tf_first_two_steps_by_hand():
    """v_0 = 1; v_t = α v + (1 − α) g²; θ −= lr·g/sqrt(v + ε) — two steps written out."""
    lr, alpha, eps = 0.01, 0.9, 1e-5
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = RMSpropTF([theta], lr=lr, alpha=alpha, eps=eps)
    g1, g2 = [0.5, -1.0], [0.1, 0.3]
    want = [1.0, -2.0]
    v = [1.0, 1.0]
    for g in (g1, g2):
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for i in range(2):
            v[i] = alpha * v[i] + (1 - alpha) * g[i] ** 2
            want[i] = want[i] - lr * g[i] / math.sqrt(v[i] + eps)
        torch.testing.assert_close(theta.detach(), torch.tensor(want, dtype=torch.float64))
    # step 1 in numbers: v = 0.9 + 0.1·0.25 = 0.925 -> θ_0 = 1 − 0.01·0.5/sqrt(0.92501)
    assert want[0] == pytest.approx(
        1 - 0.005 / math.sqrt(0.92501) - 0.001 / math.sqrt(0.9 * 0.925 + 0.1 * 0.01 + 1e-5)
    )


def test_rmsprop_tf_first_step_is_far_smaller_than_torchs():
    """The issue's point: torch's v_0 = 0 and ε outside the root make the first step ≈ lr/sqrt(1−α)
    per coordinate; TF's is ≈ lr·|g| for |g| ≪ 1."""
    g = torch.tensor([1e-3, -2e-3])
    steps = []
    for cls in (RMSpropTF, torch.optim.RMSprop):
        p = torch.nn.Parameter(torch.zeros(2))
        opt = cls([p], lr=7e-4, alpha=0.99, eps=1e-5)
        p.grad = g.clone()
        opt.step()
        steps.append(p.detach().abs())
    torch.testing.assert_close(steps[0], 7e-4 * g.abs() / torch.sqrt(1 + 0.01 * g**2 + 1e-5))
    torch.testing.assert_close(steps[1], 7e-4 * g.abs() / (torch.sqrt(0.01 * g**2) + 1e-5))
    assert (steps[1] / steps[0] > 1000).all()


def test_ppo_clipped_objective_and_gradient_by_hand():
    """ε = 0.2; r = (1.5, 0.5, 1.1, 0.7), Â = (1, 1, −1, −1):
    min terms 1.2 (clipped), 0.5, −1.1, −0.8 (clipped) -> L = −(1.2 + 0.5 − 1.1 − 0.8)/4 = 0.05;
    dL/dlog r_i = −r_i Â_i / 4 where unclipped, 0 where the clip is active: (0, −0.125, 0.275, 0)."""
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7], dtype=torch.float64)
    log_ratio = ratio.log().requires_grad_(True)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    loss = clipped_surrogate(log_ratio, advantages, 0.2)
    assert loss.item() == pytest.approx(0.05)
    (grad,) = torch.autograd.grad(loss, log_ratio)
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.125, 0.275, 0.0], dtype=torch.float64))


def tiny_batch(b: int = 48, obs_dim: int = 4, actions: int = 3) -> Batch:
    gen = torch.Generator().manual_seed(3)
    return Batch(
        obs=torch.randn(b, obs_dim, generator=gen),
        actions=torch.randint(0, actions, (b,), generator=gen),
        advantages=torch.randn(b, generator=gen),
        returns=torch.randn(b, generator=gen),
        values=torch.randn(b, generator=gen),
    )


def test_ppo_takes_epochs_times_minibatches_steps_over_disjoint_minibatches():
    config = build_config(
        "CartPole-v1",
        preset="ppo",
        overrides={"ppo.n_epochs": 3, "ppo.minibatch_size": 16, "rollout.n_envs": 4,
                   "rollout.n_steps": 12},
    )  # fmt: skip
    torch.manual_seed(0)
    policy = build_policy((4,), 3, config.policy, separate_critic=True)
    rule = build_update_rule(policy, config)
    assert isinstance(rule, PpoRule)
    seen: list[torch.Tensor] = []
    real = rule.minibatch_loss

    def spy(batch, old, idx, clip):
        seen.append(idx.clone())
        return real(batch, old, idx, clip)

    with (
        mock.patch.object(rule, "minibatch_loss", spy),
        mock.patch.object(rule.optimizer, "step", wraps=rule.optimizer.step) as step,
    ):
        metrics = rule.update(tiny_batch(), steps_done=0, log=True)
    assert step.call_count == 3 * 3
    for epoch in range(3):  # each epoch is a permutation of the 48 rows
        rows = torch.cat(seen[3 * epoch : 3 * epoch + 3])
        assert sorted(rows.tolist()) == list(range(48))
    assert metrics["kl"] is not None and float(metrics["kl"]) > 0
    assert 0.0 <= float(metrics["clip_fraction"]) <= 1.0


def test_a2c_rule_is_one_clipped_rmsprop_step_of_the_training_loss():
    """Against a hand-rolled step: loss backward, clip to 0.5, TF RMSprop from v = 1."""
    config = build_config("MinAtar/Breakout-v1", preset="a2c")
    assert (config.rollout.n_envs, config.rollout.n_steps, config.optim.first_order) == (
        16, 5, "rmsprop-tf"
    )  # fmt: skip
    config = build_config("CartPole-v1", preset="a2c")
    assert (config.rollout.n_envs, config.rollout.n_steps, config.loss.ent_coef) == (8, 5, 0.0)
    torch.manual_seed(0)
    policy = build_policy((4,), 3, config.policy, separate_critic=True).double()
    before = [p.detach().clone() for p in policy.parameters()]
    b = tiny_batch()
    batch = Batch(b.obs.double(), b.actions, b.advantages.double(), b.returns.double(), b.values)
    from kfac_bench.rl.losses import training_loss

    logits, values = policy(batch.obs)
    loss = training_loss(logits, values, batch.actions, batch.advantages, batch.returns, config)
    grads = torch.autograd.grad(loss.total, list(policy.parameters()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    scale = min(1.0, 0.5 / (float(norm) + 1e-6))  # torch.nn.utils.clip_grad_norm_'s rule
    assert scale < 1.0  # the clip is active in this example
    o = config.optim
    want = []
    for p, g in zip(before, grads):
        g = g * scale
        v = o.rmsprop_alpha * torch.zeros_like(g) + (1 - o.rmsprop_alpha) * g * g  # torch: v_0 = 0
        want.append(p - o.lr * g / (v.sqrt() + o.rmsprop_eps))
    rule = build_update_rule(policy, config)
    rule.update(batch, steps_done=0, log=False)
    for got, w in zip(policy.parameters(), want):
        torch.testing.assert_close(got.detach(), w, rtol=1e-10, atol=1e-12)
