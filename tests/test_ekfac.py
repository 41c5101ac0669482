"""EKFAC (kfac.damping_mode = "ekfac") and the empirical Fisher against dense / looped oracles.

Oracles: the exact damped Fisher inverse of one example (dense, from autograd's per-example
gradient); s from explicit loops over examples and positions; hand-built factors from per-example
training-loss gradients; an uninterrupted run for checkpoint/resume.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import variants
from kfac_bench.commands.listing import print_keys
from kfac_bench.config import ConfigError, KfacConfig
from kfac_bench.curvature import KFAC, KfacError
from kfac_bench.curvature.adapters import layer_batch
from kfac_bench.curvature.ekfac import (
    bias_scale_statistic,
    choose_route,
    reset_scale,
    scale_statistic,
)
from kfac_bench.presets import build_config
from kfac_bench.rl import trainer as trainer_mod
from kfac_bench.rl.policies import build_policy
from kfac_bench.rl.update_rules import AcktrRule, Batch

F64 = torch.float64
EKFAC = KfacConfig(dtype="float64", damping_mode="ekfac")


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed))
    )
    return q


# --------------------------------------------------------------------------------------------
# exactness for one example, the optimal diagonal for a batch


def test_linear_batch1_ekfac_is_the_exact_damped_fisher_inverse():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3).double()
    x, y, u = torch.randn(1, 4, dtype=F64), torch.randn(1, 3, dtype=F64), torch.randn(3, dtype=F64)
    lam = 1e-2
    cfg = dataclasses.replace(
        EKFAC, damping=lam, trust_region="none", momentum=0.0, ekfac_scale_decay=0.5
    )
    kfac = KFAC(layer, variants.get("paper"), cfg, lr=1.0)

    def fisher_objective(out):
        return (out @ u).tanh().sum() + 0.3 * out.pow(2).sum()

    with kfac.fisher_pass() as fisher:
        out = layer(x)
        fisher.backward(fisher_objective(out))
    kfac.zero_grad()
    ((out - y) ** 2).sum().backward()
    g = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).reshape(-1)
    # dense oracle: F = v vᵀ with v the example's gradient of the Fisher objective in [W | b]
    gw, gb = torch.autograd.grad(fisher_objective(layer(x)), [layer.weight, layer.bias])
    v = torch.cat([gw, gb[:, None]], 1).reshape(-1)
    before = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().clone()
    info = kfac.step()
    after = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    expected = torch.linalg.solve(torch.outer(v, v) + lam * torch.eye(15, dtype=F64), g)
    torch.testing.assert_close((before - after).reshape(-1), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(info.q, expected @ g, rtol=1e-9, atol=0.0)  # trust region's q


@pytest.mark.parametrize("variant", ["paper", "ikostrikov"])
def test_linear_scale_is_the_fisher_diagonal_in_the_eigenbasis_and_the_kl_uses_it(variant):
    """s = diag of the dense Fisher block in the Kronecker eigenbasis (George et al.'s optimal
    diagonal); ikostrikov's bias block gets its own; the applied-step KL uses Q diag(s) Qᵀ."""
    torch.manual_seed(1)
    b = 16
    layer = nn.Linear(5, 3).double()
    x, u = torch.randn(b, 5, dtype=F64), torch.randn(3, dtype=F64)
    cfg = dataclasses.replace(EKFAC, ekfac_scale_decay=0.0, momentum=0.0)  # s: this batch's
    kfac = KFAC(layer, variants.get(variant), cfg, lr=0.1)

    def per_example(out):  # (B,) per-example Fisher losses
        return (out @ u).sin() + 0.5 * out.pow(2).sum(1)

    with kfac.fisher_pass() as fisher:
        out = layer(x)
        fisher.backward(per_example(out).mean())
    kfac.zero_grad()
    out.pow(2).sum().backward()

    gws, gbs = [], []
    for n in range(b):
        gw, gb = torch.autograd.grad(
            per_example(layer(x[n : n + 1])).sum(), [layer.weight, layer.bias]
        )
        gws.append(gw)
        gbs.append(gb[:, None])
    gw, gb = torch.stack(gws), torch.stack(gbs)  # per-example gradients at the Fisher pass
    before = [p.detach().clone() for p in (layer.weight, layer.bias)]
    kfac.step()  # decomposes, then folds this pass into s
    d_w, d_b = (p.detach() - p0 for p, p0 in zip((layer.weight, layer.bias), before))
    state = kfac.layers["Linear"]
    if variant == "paper":  # one block [W | b], bias in the homogeneous coordinate
        blocks = [(torch.cat([gw, gb], 2), torch.cat([d_w, d_b[:, None]], 1), state.weights)]
    else:  # weights and the bias's own block ([1], bias_G)
        blocks = [(gw, d_w, state.weights), (gb, d_b[:, None], state.bias)]
    kl = 0.0
    for grads, step, inv in blocks:
        dense = torch.einsum("nij,nkl->ijkl", grads, grads) / b  # F[(i,j),(k,l)]
        # diag of (Q_G ⊗ Q_A)ᵀ F (Q_G ⊗ Q_A), entry (c, k)
        diag = torch.einsum("ijkl,ic,jd,kc,ld->cd", dense, inv.g, inv.a, inv.g, inv.a)
        torch.testing.assert_close(inv.scale, diag, rtol=1e-9, atol=1e-12)
        basis = torch.kron(inv.g, inv.a)  # row-major vec(Q_G X Q_Aᵀ) = basis · vec(X)
        ekfac = basis @ torch.diag(inv.scale.reshape(-1)) @ basis.T
        kl = kl + 0.5 * step.reshape(-1) @ ekfac @ step.reshape(-1)
    weights = state.weights
    kfac_values = reset_scale(weights.a_vals, weights.g_vals)
    assert not torch.allclose(weights.scale, kfac_values, rtol=1e-2)  # EKFAC ≠ K-FAC here
    torch.testing.assert_close(kfac.applied_step_kl(), kl, rtol=1e-9, atol=1e-15)


# --------------------------------------------------------------------------------------------
# the conv statistic against explicit loops


def conv_case(seed: int = 0, b: int = 3):
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1).double()
    x = torch.randn(b, 2, 7, 7, dtype=F64)
    w = torch.randn(3, 4, 4, dtype=F64)

    def per_example(out):  # (B,)
        return ((out * w).flatten(1).sum(1)).tanh() + 0.2 * out.pow(2).flatten(1).sum(1)

    return conv, x, per_example


@pytest.mark.parametrize("route", ["project-first", "per-example", "auto"])
@pytest.mark.parametrize("homogeneous", [True, False])
def test_conv_scale_equals_looped_projected_per_example_gradients(route, homogeneous):
    conv, x, per_example = conv_case()
    b = x.shape[0]
    out = conv(x)
    g = torch.autograd.grad(per_example(out).mean(), out)[0]
    k = 18 + homogeneous
    q_a, q_g, q_b = orthogonal(k, 1), orthogonal(3, 2), orthogonal(3, 3)
    batch = layer_batch(conv, x, g)
    got = scale_statistic(batch, q_a, q_g, homogeneous, route)
    got_bias = bias_scale_statistic(batch, q_b)

    xp = F.pad(x, (1, 1, 1, 1))
    want, want_bias = torch.zeros(3, k, dtype=F64), torch.zeros(3, 1, dtype=F64)
    for n in range(b):
        grad_n = torch.zeros(3, k, dtype=F64)
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                patch = xp[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1)
                if homogeneous:
                    patch = torch.cat([patch, torch.ones(1, dtype=F64)])
                grad_n += torch.outer(b * g[n, :, i, j], patch)
        # the loop's ∇W_n is the example's true gradient (autograd on ℓ_n alone)
        gw, gb = torch.autograd.grad(
            per_example(conv(x[n : n + 1])).sum(), [conv.weight, conv.bias]
        )
        torch.testing.assert_close(grad_n[:, :18], gw.reshape(3, -1))
        if homogeneous:
            torch.testing.assert_close(grad_n[:, 18], gb)
        want += (q_g.T @ grad_n @ q_a) ** 2 / b
        want_bias += ((q_b.T @ gb) ** 2)[:, None] / b
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_bias, want_bias, rtol=1e-10, atol=1e-12)


def test_route_choice_follows_the_multiply_adds():
    assert (
        choose_route(640, 400, 32, 257) == "per-example"
    )  # Nature conv1: 3.6 vs 19 G multiply-adds
    assert choose_route(320, 64, 16, 37) == "per-example"  # MinAtar conv
    assert choose_route(640, 1, 512, 3137) == "project-first"  # Linear: one GEMM, no (B, C, K)
    assert choose_route(8, 2, 200, 200) == "project-first"  # few positions, wide factors


# --------------------------------------------------------------------------------------------
# the T² split cannot matter under ekfac; resume


def small_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)
    ).double()


def update(net: nn.Module, kfac: KFAC, u: int, x_scale: float = 1.0) -> None:
    """One Fisher pass + training loss + step on a batch that depends only on ``u``."""
    gen = torch.Generator().manual_seed(100 + u)
    x = x_scale * torch.randn(64, 2, 8, 8, dtype=F64, generator=gen)
    sampled = torch.randint(0, 4, (64,), generator=gen)
    labels = torch.randint(0, 4, (64,), generator=gen)
    weights = torch.rand(64, dtype=F64, generator=gen)
    with kfac.fisher_pass() as fisher:
        logits = net(x)
        fisher.backward(F.log_softmax(logits, -1).gather(1, sampled[:, None]).mean())
    kfac.zero_grad()
    (weights * F.cross_entropy(logits, labels, reduction="none")).mean().backward()
    kfac.step()


def run(
    variant: str, config: KfacConfig, updates: int = 5, x_scale: float = 1.0
) -> list[torch.Tensor]:
    net = small_net()
    kfac = KFAC(net, variants.get(variant), config, lr=0.25)
    for u in range(updates):
        update(net, kfac, u, x_scale)
    return [p.detach() for p in net.parameters()]


def test_ekfac_steps_are_split_invariant_and_the_basis_still_matters():
    # same running factors up to the T² split (every variant started from its first batch);
    # τ at its default 1e-6: ekfac clips nothing per factor, so the split cannot enter
    cfg = dataclasses.replace(EKFAC, running_init="first", inverse_every=2, damping=1e-3)
    paper = run("paper", cfg)
    for name in ("baselines", "kfac-pytorch"):
        for got, want in zip(run(name, cfg), paper):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    reduce = run("kfac-reduce", cfg)  # another eigenbasis: another step
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(reduce, paper))
    eigen = run("paper", dataclasses.replace(cfg, damping_mode="eigen", eigen_clip=0.0))
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(eigen, paper))  # s ≠ d_G d_Aᵀ


def test_small_inputs_break_the_split_under_eigen_clipping_but_not_under_ekfac():
    # inputs ×0.001: Ω/T² (T = 16) has eigenvalues below τ = 1e-6 that Ω itself does not; a
    # small λ lets the clipped directions show in the step
    cfg = dataclasses.replace(EKFAC, running_init="first", inverse_every=2, damping=1e-7)
    eigen = dataclasses.replace(cfg, damping_mode="eigen", eigen_clip=1e-6)
    paper, baselines = (run(v, eigen, x_scale=1e-3) for v in ("paper", "baselines"))
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(paper, baselines))
    paper, baselines = (run(v, cfg, x_scale=1e-3) for v in ("paper", "baselines"))
    for got, want in zip(baselines, paper):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("variant", ["paper", "ikostrikov"])
def test_resume_between_decompositions_equals_the_uninterrupted_run(variant):
    cfg = dataclasses.replace(
        EKFAC, inverse_every=4, ekfac_scale_every=2, stats_decay=0.9, ekfac_scale_decay=0.7
    )
    full = run(variant, cfg, updates=6)

    net = small_net()
    kfac = KFAC(net, variants.get(variant), cfg, lr=0.25)
    for u in range(3):
        update(net, kfac, u)
    weights = kfac.layers["0"].weights
    assert not torch.equal(weights.scale, reset_scale(weights.a_vals, weights.g_vals))  # s moved
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "kfac": kfac.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    net = small_net()
    kfac = KFAC(net, variants.get(variant), cfg, lr=0.25)
    net.load_state_dict(state["net"])
    kfac.load_state_dict(state["kfac"])
    for u in range(3, 6):
        update(net, kfac, u)
    for got, want in zip(net.parameters(), full):
        assert torch.equal(got.detach(), want)


def test_async_inverse_is_refused_with_ekfac():
    with pytest.raises(KfacError, match="async_inverse"):
        KFAC(
            small_net(), variants.get("paper"), dataclasses.replace(EKFAC, async_inverse=True), 0.1
        )
    overrides = {"kfac.damping_mode": "ekfac", "kfac.async_inverse": True}
    with pytest.raises(ConfigError) as error:
        build_config("CartPole-v1", seed=0, total_steps=100, overrides=overrides)
    assert "\n" not in str(error.value) and "kfac.async_inverse" in str(error.value)


def test_presets_keys_lists_the_new_keys_with_domains(capsys):
    print_keys()
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "'ekfac'" in lines["kfac.damping_mode"]
    assert "an integer >= 1" in lines["kfac.ekfac_scale_every"]
    assert "or null" in lines["kfac.ekfac_scale_decay"]
    assert "'sampled'" in lines["kfac.fisher_type"] and "'empirical'" in lines["kfac.fisher_type"]


# --------------------------------------------------------------------------------------------
# the empirical Fisher


def test_empirical_fisher_factors_are_per_example_training_loss_moments():
    overrides = {
        "kfac.fisher_type": "empirical",
        "kfac.dtype": "float64",
        "optim.critic": "shared",
        "optim.critic_steps": 1,
        "loss.ent_coef": 0.05,  # left out of the empirical Fisher: the oracle below ignores it
        "policy.hidden": [5],
    }
    config = build_config("CartPole-v1", seed=0, total_steps=1000, overrides=overrides)
    torch.manual_seed(2)
    policy = build_policy((4,), 2, config.policy).double()
    b = 12
    gen = torch.Generator().manual_seed(5)
    batch = Batch(
        obs=torch.randn(b, 4, dtype=F64, generator=gen),
        actions=torch.randint(0, 2, (b,), generator=gen),
        advantages=torch.randn(b, dtype=F64, generator=gen),
        returns=torch.randn(b, dtype=F64, generator=gen),
        values=torch.zeros(b, dtype=F64),
    )
    layers = {"trunk.0": policy.trunk[0], "pi": policy.pi, "v": policy.v}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: inputs.__setitem__(name, i[0]))
        for name, m in layers.items()
    ]
    half = 0.5 if config.loss.value_loss == "half-mse" else 1.0
    g_moments = {name: 0.0 for name in layers}
    a_moments = {name: 0.0 for name in layers}
    for n in range(b):
        logits, value = policy(batch.obs[n : n + 1])
        log_pi = F.log_softmax(logits, -1)[0, batch.actions[n]]
        loss_n = (
            -batch.advantages[n] * log_pi
            + config.loss.vf_coef * half * (value[0] - batch.returns[n]) ** 2
        )
        biases = torch.autograd.grad(loss_n, [m.bias for m in layers.values()])
        for name, gb in zip(layers, biases):
            a = torch.cat([inputs[name][0].detach(), torch.ones(1, dtype=F64)])
            g_moments[name] = g_moments[name] + torch.outer(gb, gb) / b
            a_moments[name] = a_moments[name] + torch.outer(a, a) / b
    for h in hooks:
        h.remove()

    start = {k: v.clone() for k, v in policy.state_dict().items()}
    rule = AcktrRule(policy, config)
    rule.update(batch, steps_done=0, log=False)
    for name in layers:
        state = rule.kfac.layers[name]
        torch.testing.assert_close(state.G.value, g_moments[name], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(state.A.value, a_moments[name], rtol=1e-10, atol=1e-14)

    policy.load_state_dict(start)  # the sampled Fisher on the same batch: other G, same A
    sampled = AcktrRule(
        policy,
        dataclasses.replace(config, kfac=dataclasses.replace(config.kfac, fisher_type="sampled")),
    )
    sampled.update(batch, steps_done=0, log=False)
    for name in layers:
        state = sampled.kfac.layers[name]
        assert not torch.allclose(state.G.value, g_moments[name], rtol=1e-2)
        torch.testing.assert_close(state.A.value, a_moments[name], rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# the real trainer


@pytest.mark.parametrize(
    "env, variant, extra",
    [
        ("CartPole-v1", "paper", {}),
        ("CartPole-v1", "ikostrikov", {"kfac.fisher_type": "empirical"}),
        ("MinAtar/Breakout-v1", "kfac-pytorch", {"kfac.ekfac_scale_every": 2}),
    ],
)
def test_short_ekfac_runs_reach_done(tmp_path, env, variant, extra):
    overrides = {
        "kfac.damping_mode": "ekfac",
        "kfac.inverse_every": 3,
        "rollout.n_envs": 8,
        "rollout.n_steps": 8,
        "log.update_every": 2,
        **extra,
    }
    config = build_config(env, variant=variant, seed=1, total_steps=640, overrides=overrides)
    result = trainer_mod.train(config, tmp_path / "run")
    assert result.state == "done" and result.steps >= 640
