"""Continuous control: the diagonal Gaussian, normalisation, the KL-adaptive stepsize, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kfac_bench.presets import build_config
from kfac_bench.rl.distributions import LOG_STD_FISHER, DiagGaussian
from kfac_bench.rl.normalize import RunningMeanStd
from kfac_bench.rl.stepsize import KlAdaptiveStepsize
from kfac_bench.rl.trainer import train


def test_gaussian_log_prob_and_its_derivatives_match_a_hand_computation():
    mean = torch.tensor([[0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor([0.2, -0.3], dtype=torch.float64, requires_grad=True)
    action = torch.tensor([[1.5, -0.4]], dtype=torch.float64)
    logp = DiagGaussian(mean, log_std).log_prob(action)
    want = 0.0
    for a, m, s in zip([1.5, -0.4], [0.5, -1.0], [0.2, -0.3]):
        sigma = math.exp(s)
        want += -((a - m) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    assert float(logp.detach()) == pytest.approx(want, rel=1e-12)
    logp.sum().backward()
    for i, (a, m, s) in enumerate(zip([1.5, -0.4], [0.5, -1.0], [0.2, -0.3])):
        sigma2 = math.exp(2 * s)
        assert float(mean.grad[0, i]) == pytest.approx((a - m) / sigma2, rel=1e-12)
        assert float(log_std.grad[i]) == pytest.approx((a - m) ** 2 / sigma2 - 1, rel=1e-12)


def test_gaussian_kl_and_entropy_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m0, m1 = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    s0, s1 = torch.randn(3, generator=gen) * 0.3, torch.randn(3, generator=gen) * 0.3
    old, new = DiagGaussian(m0, s0), DiagGaussian(m1, s1)
    p = torch.distributions.Normal(m0, s0.exp())
    q = torch.distributions.Normal(m1, s1.exp())
    torch.testing.assert_close(new.kl_from(old), torch.distributions.kl_divergence(p, q).sum(-1))
    torch.testing.assert_close(old.entropy(), p.entropy().sum(-1))


def test_the_log_std_fisher_is_two_by_monte_carlo():
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(((z**2 - 1) ** 2).mean()) == pytest.approx(LOG_STD_FISHER, rel=0.02)


def test_running_mean_std_equals_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, size=(n, 4)) for n in (1, 7, 30)]
    stats = RunningMeanStd((4,))
    for b in batches:
        stats.update(b)
    data = np.concatenate(batches)
    # the prior (mean 0, var 1, count 1e-4) weighs 1e-4 of one sample
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, data.var(0), rtol=1e-4)


def test_kl_adaptive_stepsize_follows_the_baselines_rule():
    rule = KlAdaptiveStepsize(lr=0.03, target_kl=0.002, factor=1.5)
    sequence = [0.01, 0.0041, 0.003, 0.0005, 0.00099, float("nan"), 1.0]
    lrs = [rule.observe(kl) for kl in sequence]
    want, lr = [], 0.03
    for kl in sequence:
        if kl == kl and kl > 0.004:
            lr /= 1.5
        elif kl == kl and kl < 0.001:
            lr *= 1.5
        want.append(lr)
    assert lrs == pytest.approx(want, rel=1e-12)
    big = KlAdaptiveStepsize(lr=0.9, target_kl=0.002, factor=1.5)
    assert big.observe(0.0) == 1.0  # capped


@pytest.mark.parametrize("preset", ["mujoco-tuned", "ppo"])
def test_pendulum_trains_deterministically(tmp_path, preset):
    overrides = {"rollout.n_steps": 200, "optim.critic_steps": 2} if preset != "ppo" else {}
    if preset == "ppo":
        overrides = {"rollout.n_steps": 200, "ppo.minibatch_size": 50, "ppo.n_epochs": 2}
    config = build_config(
        "Pendulum-v1", preset=preset, seed=3, total_steps=800, overrides=overrides
    )
    for name in ("a", "b"):
        result = train(config, tmp_path / name)
        assert result.state == "done" and result.steps == 800
    first = (tmp_path / "a" / "episodes.csv").read_text().splitlines()
    second = (tmp_path / "b" / "episodes.csv").read_text().splitlines()
    assert len(first) == 1 + 4  # header + four 200-step episodes
    assert [r.split(",")[2:] for r in first] == [r.split(",")[2:] for r in second]
    assert all(float(r.split(",")[2]) < 0 for r in first[1:])  # Pendulum rewards are negative


def test_acktr_mujoco_preset_is_the_baselines_setup():
    c = build_config("Hopper-v5", preset="acktr-mujoco")
    assert (c.rollout.n_steps, c.rollout.gae_lambda, c.optim.lr_schedule) == (
        2500,
        0.97,
        "kl-adaptive",
    )
    assert (c.optim.critic, c.optim.critic_steps, c.critic_kfac.kl_clip) == (
        "separate-kfac",
        25,
        0.3,
    )
    assert (c.kfac.inverse_every, c.policy.critic_activation) == (2, "elu")


def test_unbounded_or_multidimensional_box_actions_are_one_clear_error():
    import gymnasium as gym

    from kfac_bench.rl.env_registry import check_box_actions
    from kfac_bench.rl.vec_env import EnvError

    with pytest.raises(EnvError, match="unbounded Box action space"):
        check_box_actions("X-v0", gym.spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(EnvError, match="only 1-D Box actions"):
        check_box_actions("X-v0", gym.spaces.Box(-1, 1, (2, 2)))
    check_box_actions("X-v0", gym.spaces.Box(-1, 1, (3,)))  # accepted


def test_kfac_steps_log_std_by_its_exact_fisher(tmp_path):
    """Under log_std_update=fisher the log σ step is g / (2 + λ) inside the trust region."""
    from kfac_bench.rl.trainer import Trainer

    config = build_config(
        "Pendulum-v1",
        seed=1,
        total_steps=400,
        overrides={"rollout.n_steps": 200, "kfac.cold_iters": 0},
    )
    trainer = Trainer(config, tmp_path)
    kfac = trainer.kfac
    log_std = trainer.policy.log_std_parameter
    assert kfac.exact_diagonal == {log_std: LOG_STD_FISHER}
    assert log_std not in kfac.unsupported_params
