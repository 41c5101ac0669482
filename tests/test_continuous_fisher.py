"""The Fisher of a diagonal Gaussian policy (issue 13): K-FAC's exactness at batch 1, the
fidelity tool's closed-form true Fisher against per-example gradients, and the tool end to end."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
from fidelity_support import one_thread  # noqa: F401  (fixture)
from kfac_oracles import assert_batch1_factors_are_exact
from torch import nn
from torch.func import functional_call, grad

import variants
from kfac_bench.config import PolicyConfig
from kfac_bench.fidelity import Request, fidelity
from kfac_bench.fidelity.exact import FisherProblem, SampledRows
from kfac_bench.fidelity.expected import ExpectedRows
from kfac_bench.fidelity.layout import build_slots, flatten
from kfac_bench.rl.distributions import DiagGaussian
from kfac_bench.rl.losses import fisher_loss
from kfac_bench.rl.policies import build_policy

COEF = 0.7  # vf_fisher_coef: the value rows' weight 4c² = 1.96 is visibly not 1


@pytest.mark.parametrize("name", variants.names())
def test_linear_batch1_gaussian_kron_equals_exact_fisher_block(name):
    """One Linear layer μ = W x + b under N(μ, diag σ²), batch 1, a sampled action: the
    statistic from the trainer's Fisher loss (``fisher_loss`` on a DiagGaussian) gives
    kron(G, A) = g gᵀ, the exact sampled Fisher block, for every variant (the W–W block and
    bias_G the b–b block where the variant splits the bias off)."""
    torch.manual_seed(3)
    layer = nn.Linear(4, 3).double()
    log_std = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
    x = torch.randn(1, 4, dtype=torch.float64)
    with torch.no_grad():
        action = DiagGaussian(layer(x), log_std).sample()

    def log_pi(params, xs):
        mean = functional_call(layer, params, (xs,))
        return DiagGaussian(mean, log_std).log_prob(action)[0]

    params = {k: v.detach() for k, v in layer.named_parameters()}
    per_example = grad(log_pi)(params, x)
    # the derivative at the mean is (a − μ)/σ² (a hand formula, not autograd)
    with torch.no_grad():
        delta = (action - layer(x)) / torch.exp(2 * log_std)
    torch.testing.assert_close(per_example["bias"], delta[0])

    out = layer(x)
    g = torch.autograd.grad(
        fisher_loss(DiagGaussian(out, log_std), out.new_zeros(1), action, 0.0, False), out
    )[0]
    assert_batch1_factors_are_exact(variants.get(name).factors(layer, x, g), per_example)


def gaussian_problem(separate_critic: bool, seed: int = 0, batch: int = 5) -> FisherProblem:
    """A small continuous MLP policy (2 action dims), a batch, Gaussian actions and ε."""
    torch.manual_seed(seed)
    config = PolicyConfig(hidden=(5, 4), log_std_init=-0.4)
    policy = build_policy(
        (3,), 2, config, separate_critic=separate_critic, continuous=True
    ).double()
    with torch.no_grad():
        policy.log_std_parameter.copy_(torch.tensor([-0.4, 0.35]))
    obs = torch.randn(batch, 3, dtype=torch.float64)
    with torch.no_grad():
        mean, _ = policy(obs)
        actions = policy.distribution(mean).sample()
    noise = torch.randn(batch, dtype=torch.float64)
    log_std = policy.log_std_parameter.detach().clone()
    return FisherProblem(
        policy, build_slots(policy), obs, actions, noise, COEF, not separate_critic, log_std
    )


def expectation_by_sigma_points(problem: FisherProblem) -> torch.Tensor:
    """E over a ~ N(μ_n, Σ) and ε ~ N(0, 1) of g gᵀ, g = ∇ℓ_n(a, ε), per example by explicit loops.

    g is linear in (a − μ_n) and in ε, the two independent with mean 0, so the expectation is
    exact on points matching their second moments: a = μ_n ± σ_i e_i (weight ½ each, ε = 0), and
    a = μ_n with ε = ±1 (weight ½ each). Each g is autograd of the real log-likelihood and value
    term (``SampledRows`` on a one-example problem), not the closed form under test."""
    total = torch.zeros(problem.dim, problem.dim, dtype=torch.float64)
    with torch.no_grad():
        means, _ = problem.policy(problem.obs)
    sigma = problem.log_std.exp()
    for n in range(problem.batch):
        points = []
        for i in range(sigma.numel()):
            for sign in (1.0, -1.0):
                a = means[n].clone()
                a[i] += sign * sigma[i]
                points.append((a, 0.0))
        if problem.include_value:
            points += [(means[n].clone(), 1.0), (means[n].clone(), -1.0)]
        for action, eps in points:
            one = FisherProblem(
                problem.policy,
                problem.slots,
                problem.obs[n : n + 1],
                action[None],
                torch.tensor([eps], dtype=torch.float64),
                problem.vf_fisher_coef,
                problem.include_value,
                problem.log_std,
            )
            g = flatten(problem.slots, SampledRows(one).gradients(), lead=1)[0]
            total += 0.5 * torch.outer(g, g)
    return total / problem.batch


@pytest.mark.parametrize("separate_critic", [False, True], ids=["shared-value-term", "separate"])
def test_closed_form_gaussian_fisher_equals_per_example_gradient_expectation(separate_critic):
    problem = gaussian_problem(separate_critic)
    rows = ExpectedRows(problem)
    r = flatten(problem.slots, rows.gradients(), lead=1)  # (B·R, P)
    closed_form = r.T @ r / problem.batch
    oracle = expectation_by_sigma_points(problem)
    torch.testing.assert_close(closed_form, oracle, rtol=1e-10, atol=1e-12)
    assert rows.per_example == (2 if separate_critic else 3)
    # not a degenerate agreement: the σ-weighting matters (σ = 1 gives a different matrix)
    unit = dataclasses.replace(problem, log_std=torch.zeros(2, dtype=torch.float64))
    r1 = flatten(unit.slots, ExpectedRows(unit).gradients(), lead=1)
    assert (r1.T @ r1 / unit.batch - oracle).abs().max() > 1e-2


def test_log_std_is_left_out_of_the_compared_layers():
    problem = gaussian_problem(separate_critic=True)
    keys = {k for slot in problem.slots for k in slot.keys}
    assert "actor.log_std" not in keys
    assert {slot.name for slot in problem.slots} == {"trunk.0", "trunk.2", "pi"}  # no critic


def test_fidelity_command_on_a_gaussian_policy(tmp_path):
    """The tool end to end on Pendulum's initial policy (separate critic, normalised obs): the
    actor's layers only, every cosine and block error a valid number."""
    request = Request(
        env="Pendulum-v1",
        batch=32,
        variants=("paper",),
        damping_modes=("eigen",),
        budget_s=20,
        out=tmp_path,
        figure=False,
    )
    path = fidelity(request, log=lambda _: None)
    rows = list(csv.DictReader(path.open()))
    assert {r["env"] for r in rows} == {"Pendulum-v1"}
    layers = {r["layer"] for r in rows if r["layer"]}
    assert layers >= {"trunk.0", "trunk.2", "pi"}
    cosines = [float(r["cosine"]) for r in rows if r["cosine"]]
    assert cosines and all(-1.0 - 1e-9 <= c <= 1.0 + 1e-9 for c in cosines)
    errors = [float(r["block_rel_error"]) for r in rows if r["block_rel_error"]]
    assert errors and all(0.0 <= e < 10.0 for e in errors)
