"""The true-Fisher reference (issue 11): equal to a dense solve with F built by explicit loops over
states and actions, for both operator forms; the rows against it and the sampled reference's own
row against it carry the values of independent dense computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fidelity_support import COEF, one_thread, tiny  # noqa: F401  (fixture)

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.fidelity import Settings, measure
from kfac_bench.fidelity.approx import capture_layer_batches, variant_blocks
from kfac_bench.fidelity.exact import FisherProblem
from kfac_bench.fidelity.layout import flatten
from kfac_bench.fidelity.metrics import cosine
from kfac_bench.fidelity.references import Reference

F64 = KfacConfig(dtype="float64")
CG = {"tol": 1e-13, "max_iter": 2000}


def _flat_grad(problem: FisherProblem, scalar: torch.Tensor) -> torch.Tensor:
    named = dict(problem.policy.named_parameters())
    keys = [k for slot in problem.slots for k in slot.keys]
    grads = torch.autograd.grad(
        scalar, [named[k] for k in keys], retain_graph=True, allow_unused=True
    )
    grads = [torch.zeros_like(named[k]) if d is None else d for k, d in zip(keys, grads)]
    return flatten(problem.slots, dict(zip(keys, grads)))


def loop_true_fisher(problem: FisherProblem) -> torch.Tensor:
    """(1/B) Σ_n [Σ_a π(a|s_n) ∇log π(a|s_n) ∇log π(a|s_n)ᵀ + 4c² ∇v_n ∇v_nᵀ], one state and one
    action at a time. The value term: ∇ℓ_n carries 2cε_n∇v_n with E[ε²] = 1 and E[ε] = 0."""
    dim = problem.dim
    fisher = torch.zeros(dim, dim, dtype=torch.float64)
    for n in range(problem.batch):
        logits, value = problem.policy(problem.obs[n : n + 1])
        log_probs = F.log_softmax(logits[0], dim=-1)
        for a in range(log_probs.shape[0]):
            score = _flat_grad(problem, log_probs[a])
            fisher += float(log_probs[a].detach().exp()) * torch.outer(score, score)
        if problem.include_value:
            dv = _flat_grad(problem, value[0])
            fisher += 4 * COEF**2 * torch.outer(dv, dv)
    return fisher / problem.batch


def loop_sampled_fisher(problem: FisherProblem) -> torch.Tensor:
    """(1/B) Σ_n ∇ℓ_n ∇ℓ_nᵀ with ℓ_n = log π(a_n|s_n) − c(v_n − stopgrad(v_n + ε_n))², one by one."""
    fisher = torch.zeros(problem.dim, problem.dim, dtype=torch.float64)
    for n in range(problem.batch):
        logits, value = problem.policy(problem.obs[n : n + 1])
        term = F.log_softmax(logits[0], -1)[problem.actions[n]]
        if problem.include_value:
            term = term - COEF * (value[0] - (value[0] + problem.noise[n]).detach()) ** 2
        grad = _flat_grad(problem, term)
        fisher += torch.outer(grad, grad)
    return fisher / problem.batch


def damped(fisher: torch.Tensor, g: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.linalg.solve(fisher + lam * torch.eye(fisher.shape[0], dtype=fisher.dtype), g)


def some_gradient(problem: FisherProblem, seed: int) -> torch.Tensor:
    return torch.randn(
        problem.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("stored", [True, False], ids=["stored-jacobian", "jvp-vjp"])
@pytest.mark.parametrize("include_value", [True, False], ids=["value-term", "policy-only"])
def test_true_fisher_reference_is_the_dense_solve(stored, include_value):
    problem = tiny(1, include_value=include_value)
    want = loop_true_fisher(problem)
    g = some_gradient(problem, 1)
    # dense_limit 0 on the jvp/vjp side: nothing is formed, every solve is CG with exact products
    reference = Reference(
        "true-fisher",
        problem,
        g,
        dense_limit=4_000_000 if stored else 0,
        max_jacobian_bytes=1e9 if stored else 0,
    )
    assert reference.stored is stored
    assert reference.rows == problem.batch * (4 if include_value else 3)  # A (+1) rows per state
    if stored:
        torch.testing.assert_close(reference.network_dense, want, rtol=1e-12, atol=1e-14)
    probe = torch.randn(2, problem.dim, generator=torch.Generator().manual_seed(9), dtype=g.dtype)
    torch.testing.assert_close(reference.op.mv(probe), probe @ want, rtol=1e-10, atol=1e-13)
    for lam in (1e-2, 1e-4):
        reference.solve(lam, CG)
        x = damped(want, g, lam)
        got = reference.network[lam]
        assert got.residual < 1e-9
        torch.testing.assert_close(got.direction, x, rtol=1e-7, atol=1e-9 * float(x.abs().max()))
        for slot in problem.slots:
            block = want[slot.start : slot.stop, slot.start : slot.stop]
            x_l = damped(block, slot.take(g), lam)
            got_l = reference.layers[lam][slot.name].direction
            torch.testing.assert_close(got_l, x_l, rtol=1e-7, atol=1e-9 * float(x_l.abs().max()))


def test_the_true_fisher_is_the_mean_of_many_sampled_ones():
    """Sanity of the oracle itself: averaging the loop's sampled Fisher over 4000 draws of
    (a, ε) per state approaches the loop's true Fisher (Monte-Carlo error ~ 1/√4000)."""
    problem = tiny(2, batch=3)
    want = loop_true_fisher(problem)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        probs = torch.softmax(problem.policy(problem.obs)[0], -1)
    draws = 4000
    # closed-form per draw through the sampled Jacobian: rows ∇log π(a) + 2cε∇v
    scores, values = [], []
    for n in range(problem.batch):
        logits, value = problem.policy(problem.obs[n : n + 1])
        log_probs = F.log_softmax(logits[0], -1)
        scores.append(torch.stack([_flat_grad(problem, lp) for lp in log_probs]))
        values.append(_flat_grad(problem, value[0]))
    total = torch.zeros_like(want)
    for n in range(problem.batch):
        acts = torch.multinomial(probs[n], draws, replacement=True, generator=gen)
        eps = torch.randn(draws, generator=gen, dtype=torch.float64)
        rows = scores[n][acts] + 2 * COEF * eps[:, None] * values[n]
        total += rows.T @ rows / draws
    mean = total / problem.batch
    assert float((mean - want).norm() / want.norm()) < 0.06


def test_rows_against_both_references_carry_the_dense_values():
    problem = tiny(3, batch=5)
    g = some_gradient(problem, 3)
    lam = 1e-2
    true, sampled = loop_true_fisher(problem), loop_sampled_fisher(problem)
    settings = Settings(variants=("paper",), damping_modes=("eigen",), dampings=(lam,))
    rows = measure(problem, g, F64, settings)
    by_key = {(r["reference"], r["variant"], r["layer"]): r for r in rows}
    assert {r["reference"] for r in rows} == {"true-fisher", "sampled-fisher"}

    blocks = variant_blocks(variants.get("paper"), problem.slots, capture_layer_batches(problem))
    config = KfacConfig(dtype="float64", damping=lam)
    d = torch.cat([b.precondition(b.slot.take(g), config).delta for b in blocks])
    kron = torch.block_diag(*(b.dense() for b in blocks))
    for name, fisher in (("true-fisher", true), ("sampled-fisher", sampled)):
        row = by_key[name, "paper", "network"]
        x = damped(fisher, g, lam)
        assert row["factors"] == "batch"
        assert row["cosine"] == pytest.approx(cosine(d, x), abs=1e-10)
        assert row["norm_ratio"] == pytest.approx(float(d.norm() / x.norm()), rel=1e-9)
        error = float((fisher - kron).norm() / fisher.norm())
        assert row["block_rel_error"] == pytest.approx(error, rel=1e-9)
        assert row["kl_exact_direction"] == pytest.approx(0.5 * float(x @ fisher @ x), rel=1e-9)

    # the sampled reference's own direction against the true one (and the matrices' distance)
    cross = by_key["true-fisher", "sampled-fisher", "network"]
    x_t, x_s = damped(true, g, lam), damped(sampled, g, lam)
    assert cross["damping_mode"] == "exact" and not cross.get("factors")
    assert cross["cosine"] == pytest.approx(cosine(x_s, x_t), abs=1e-10)
    assert cross["block_rel_error"] == pytest.approx(
        float((true - sampled).norm() / true.norm()), rel=1e-9
    )
    assert cross["cosine"] < 0.999  # one sample per state is not the expectation
    slot = problem.slots[0]
    layer = by_key["true-fisher", "sampled-fisher", slot.name]
    block = slice(slot.start, slot.stop)
    want = cosine(
        damped(sampled[block, block], slot.take(g), lam),
        damped(true[block, block], slot.take(g), lam),
    )
    assert layer["cosine"] == pytest.approx(want, abs=1e-10)
