"""Fidelity's ``ekfac`` damping mode and ``fisher_type`` split (issue 14 item 3), against dense
oracles: factors, eigenbases and the EKFAC diagonal s built from explicit per-example loops
(autograd on one example's loss at a time, layer inputs from forward hooks), the EKFAC block
Q diag(s) Qᵀ formed as a dense matrix, and the exact references from explicit loops over states and
actions (``test_fidelity_true.loop_true_fisher`` written out again here)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from fidelity_support import COEF, one_thread, tiny  # noqa: F401  (fixture)
from torch import nn

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.fidelity import Settings, measure
from kfac_bench.fidelity.batch import Rollout, empirical_loss
from kfac_bench.fidelity.exact import FisherProblem
from kfac_bench.fidelity.layout import build_slots, flatten
from kfac_bench.fidelity.metrics import cosine
from kfac_bench.fidelity.running import running_blocks
from kfac_bench.presets import build_config

F64 = KfacConfig(dtype="float64")
LAM = 1e-2


def fisher_term(problem: FisherProblem, n: int, logits, value) -> torch.Tensor:
    """ℓ_n = log π(a_n|s_n) − c(v_n − stopgrad(v_n + ε_n))² (the trainer's Fisher loss term)."""
    term = F.log_softmax(logits[0], -1)[problem.actions[n]]
    return term - COEF * (value[0] - (value[0] + problem.noise[n]).detach()) ** 2


def per_example(problem: FisherProblem, term_of) -> list[dict[str, tuple]]:
    """Per example n and layer: (input a_n (K,), output derivative ĝ_n (C,), flat ∇θ ℓ_n (P,))."""
    out = []
    modules = {s.name: s.module for s in problem.slots}
    for n in range(problem.batch):
        inputs = {}
        hooks = [
            m.register_forward_hook(lambda mod, x, y, k=k, store=inputs: store.__setitem__(k, x[0]))
            for k, m in modules.items()
        ]
        try:
            logits, value = problem.policy(problem.obs[n : n + 1])
        finally:
            for h in hooks:
                h.remove()
        term = term_of(n, logits, value)
        named = dict(problem.policy.named_parameters())
        keys = [k for slot in problem.slots for k in slot.keys]
        grads = torch.autograd.grad(term, [named[k] for k in keys], retain_graph=True)
        flat = flatten(problem.slots, dict(zip(keys, grads)))
        example = {}
        for slot in problem.slots:  # ĝ_n of a Linear layer is its bias gradient
            m = slot.matrix(slot.take(flat))
            example[slot.name] = (inputs[slot.name][0].detach(), m[:, -1], flat)
        out.append(example)
    return out


def loop_true_fisher(problem: FisherProblem) -> torch.Tensor:
    """(1/B) Σ_n [Σ_a π(a|s_n) ∇log π(a|s_n)∇log π(a|s_n)ᵀ + 4c²∇v_n∇v_nᵀ], one by one."""
    named = dict(problem.policy.named_parameters())
    keys = [k for slot in problem.slots for k in slot.keys]

    def flat_grad(scalar):
        grads = torch.autograd.grad(
            scalar, [named[k] for k in keys], retain_graph=True, allow_unused=True
        )
        grads = [torch.zeros_like(named[k]) if d is None else d for k, d in zip(keys, grads)]
        return flatten(problem.slots, dict(zip(keys, grads)))

    fisher = torch.zeros(problem.dim, problem.dim, dtype=torch.float64)
    for n in range(problem.batch):
        logits, value = problem.policy(problem.obs[n : n + 1])
        log_probs = F.log_softmax(logits[0], dim=-1)
        for a in range(log_probs.shape[0]):
            score = flat_grad(log_probs[a])
            fisher += float(log_probs[a].detach().exp()) * torch.outer(score, score)
        dv = flat_grad(value[0])
        fisher += 4 * COEF**2 * torch.outer(dv, dv)
    return fisher / problem.batch


def damped(fisher: torch.Tensor, g: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.linalg.solve(fisher + lam * torch.eye(fisher.shape[0], dtype=fisher.dtype), g)


def some_gradient(problem: FisherProblem, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(problem.dim, generator=gen, dtype=torch.float64)


def dense_blocks(problem, examples, kind: str, split_bias: bool):
    """Per layer, the dense M-order curvature block and its damped solve's matrix.

    ``kind``: ``kron`` (A ⊗ G of the hand-built factors) or ``ekfac`` (Q diag(s) Qᵀ with Q_A, Q_G
    the eigenvectors of those factors and s from the per-example gradients, explicit loop)."""
    blocks = []
    for slot in problem.slots:
        rows = [ex[slot.name] for ex in examples]
        b = len(rows)
        a_bar = [torch.cat([a, a.new_ones(1)]) if not split_bias else a for a, _, _ in rows]
        A = sum(torch.outer(a, a) for a in a_bar) / b
        G = sum(torch.outer(g, g) for _, g, _ in rows) / b
        grads = [slot.matrix(slot.take(flat)) for _, _, flat in rows]  # (C, K+1) each
        if kind == "kron":
            if not split_bias:
                blocks.append(torch.kron(G, A))
                continue
            k, cols = slot.k, slot.cols
            pad = A.new_zeros(cols, cols)
            pad[:k, :k] = A
            corner = A.new_zeros(cols, cols)
            corner[k, k] = 1.0
            blocks.append(torch.kron(G, pad) + torch.kron(G, corner))  # Linear: bias_G = G
            continue
        q_a, q_g = torch.linalg.eigh(A)[1], torch.linalg.eigh(G)[1]
        c = G.shape[0]
        if not split_bias:
            s = torch.zeros(c, slot.cols, dtype=torch.float64)
            for m in grads:
                s += (q_g.T @ m @ q_a) ** 2
            basis = torch.kron(q_g, q_a)
            blocks.append(basis @ torch.diag((s / b).reshape(-1)) @ basis.T)
            continue
        k = slot.k
        s = torch.zeros(c, k, dtype=torch.float64)
        s_b = torch.zeros(c, dtype=torch.float64)
        for m in grads:
            s += (q_g.T @ m[:, :k] @ q_a) ** 2
            s_b += (q_g.T @ m[:, k]) ** 2  # bias_G = G: the same basis
        w_block = torch.kron(q_g, q_a) @ torch.diag((s / b).reshape(-1)) @ torch.kron(q_g, q_a).T
        b_block = q_g @ torch.diag(s_b / b) @ q_g.T
        # back to M order: row i·cols + j, weights j < k, bias j = k
        idx_w = torch.tensor([i * slot.cols + j for i in range(c) for j in range(k)])
        idx_b = torch.tensor([i * slot.cols + k for i in range(c)])
        full = torch.zeros(slot.size, slot.size, dtype=torch.float64)
        full[idx_w[:, None], idx_w[None, :]] = w_block
        full[idx_b[:, None], idx_b[None, :]] = b_block
        blocks.append(full)
    return blocks


def rows_by_key(rows):
    return {
        (r["reference"], r.get("fisher_type"), r["variant"], r["damping_mode"], r["layer"]): r
        for r in rows
    }


@pytest.mark.parametrize(("variant", "split"), [("paper", False), ("ikostrikov", True)])
def test_ekfac_row_is_the_dense_eigenbasis_computation(variant, split):
    problem = tiny(4)
    g = some_gradient(problem, 4)
    examples = per_example(problem, lambda n, lo, v: fisher_term(problem, n, lo, v))
    true = loop_true_fisher(problem)
    flats = [ex[problem.slots[0].name][2] for ex in examples]  # ∇θ ℓ_n, every layer
    sampled = sum(torch.outer(v, v) for v in flats) / problem.batch
    settings = Settings(variants=(variant,), damping_modes=("eigen", "ekfac"), dampings=(LAM,))
    by = rows_by_key(measure(problem, g, F64, settings))

    ekfac = dense_blocks(problem, examples, "ekfac", split)
    kron = dense_blocks(problem, examples, "kron", split)
    d = torch.cat([damped(b, s.take(g), LAM) for b, s in zip(ekfac, problem.slots)])
    x_true, x_sampled = damped(true, g, LAM), damped(sampled, g, LAM)
    for ref, fisher, x in (("true-fisher", true, x_true), ("sampled-fisher", sampled, x_sampled)):
        row = by[ref, "sampled", variant, "ekfac", "network"]
        assert row["cosine"] == pytest.approx(cosine(d, x), abs=1e-10)
        assert row["norm_ratio"] == pytest.approx(float(d.norm() / x.norm()), rel=1e-9)
        approx = torch.block_diag(*ekfac)
        want = float((fisher - approx).norm() / fisher.norm())
        assert row["block_rel_error"] == pytest.approx(want, rel=1e-9)
        for slot, block in zip(problem.slots, ekfac):
            sl = slice(slot.start, slot.stop)
            layer = by[ref, "sampled", variant, "ekfac", slot.name]
            want = float((fisher[sl, sl] - block).norm() / fisher[sl, sl].norm())
            assert layer["block_rel_error"] == pytest.approx(want, rel=1e-9)
            d_l = damped(block, slot.take(g), LAM)
            assert layer["cosine"] == pytest.approx(
                cosine(d_l, damped(fisher[sl, sl], slot.take(g), LAM)), abs=1e-10
            )
        # the eigen row of the same factors is a different (and here checked) matrix
        eigen = by[ref, "sampled", variant, "eigen", "network"]
        want = float((fisher - torch.block_diag(*kron)).norm() / fisher.norm())
        assert eigen["block_rel_error"] == pytest.approx(want, rel=1e-9)
    # EKFAC is not K-FAC on these factors: another curvature, another direction
    ek, eig = (by["true-fisher", "sampled", variant, m, "network"] for m in ("ekfac", "eigen"))
    assert abs(ek["cosine"] - eig["cosine"]) > 1e-4
    assert abs(ek["block_rel_error"] - eig["block_rel_error"]) > 1e-3
    if not split:
        # against the sampled block, s is the diagonal of Qᵀ F Q: only off-diagonal mass is left
        # (‖Qᵀ F Q − diag(s)‖² = ‖F‖² − ‖s‖²), and it is the smallest error of any diagonal
        for slot, block in zip(problem.slots, ekfac):
            sl = slice(slot.start, slot.stop)
            fs = sampled[sl, sl]
            s_norm_sq = float(torch.linalg.eigvalsh(block).square().sum())
            want = ((float(fs.norm()) ** 2 - s_norm_sq) / float(fs.norm()) ** 2) ** 0.5
            got = by["sampled-fisher", "sampled", variant, "ekfac", slot.name]["block_rel_error"]
            assert got == pytest.approx(want, rel=1e-6)


class OneLinear(nn.Module):
    """A single Linear layer giving the logits and the value (the last output)."""

    def __init__(self, inputs: int, actions: int) -> None:
        super().__init__()
        self.layer = nn.Linear(inputs, actions + 1)

    def forward(self, obs):
        out = self.layer(obs)
        return out[:, :-1], out[:, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ekfac_is_exact_at_batch_one_on_a_single_linear_layer(seed):
    """One example, one Linear layer: the sampled Fisher is rank one, vec(ĝāᵀ)vec(ĝāᵀ)ᵀ, and is
    diagonal in the Kronecker eigenbasis, so EKFAC equals it and its direction the exact one."""
    torch.manual_seed(seed)
    policy = OneLinear(4, 3).double()
    obs = torch.randn(1, 4, dtype=torch.float64)
    acts = torch.tensor([seed % 3])
    noise = torch.randn(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    problem = FisherProblem(policy, build_slots(policy), obs, acts, noise, COEF, True)
    g = some_gradient(problem, seed)
    for lam in (1e-2, 1e-5):
        settings = Settings(variants=("paper",), damping_modes=("ekfac",), dampings=(lam,))
        by = rows_by_key(measure(problem, g, F64, settings))
        row = by["sampled-fisher", "sampled", "paper", "ekfac", "network"]
        assert row["cosine"] == pytest.approx(1.0, abs=1e-9)
        assert row["norm_ratio"] == pytest.approx(1.0, rel=1e-7)
        assert row["block_rel_error"] == pytest.approx(0.0, abs=1e-12)
        # the expectation over actions is not rank one: EKFAC is not the true Fisher here
        assert by["true-fisher", "sampled", "paper", "ekfac", "network"]["cosine"] < 0.999


def training_batch(problem: FisherProblem, seed: int):
    gen = torch.Generator().manual_seed(seed + 100)
    b = problem.batch
    rollout = Rollout(
        obs=problem.obs,
        actions=problem.actions,
        advantages=torch.randn(b, generator=gen, dtype=torch.float64) * 2 + 0.5,
        returns=torch.randn(b, generator=gen, dtype=torch.float64),
        noise=problem.noise,
    )
    config = build_config("MinAtar/Breakout-v1")  # shared critic
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, vf_coef=0.7))
    return rollout, config


@pytest.mark.parametrize("normalize", [True, False])
def test_empirical_rows_are_the_dense_build_from_training_loss_gradients(normalize):
    problem = tiny(5, batch=7)
    g = some_gradient(problem, 5)
    rollout, config = training_batch(problem, 5)
    config = dataclasses.replace(
        config, rollout=dataclasses.replace(config.rollout, normalize_advantages=normalize)
    )
    adv = rollout.advantages
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)

    def term(n, logits, value):  # ℓ_n = −Â_n log π(a_n|s_n) + vf_coef (v_n − R_n)²
        log_pi = F.log_softmax(logits[0], -1)[problem.actions[n]]
        return -adv[n] * log_pi + 0.7 * (value[0] - rollout.returns[n]) ** 2

    examples = per_example(problem, term)
    true = loop_true_fisher(problem)
    x = damped(true, g, LAM)
    settings = Settings(
        variants=("paper",),
        damping_modes=("eigen", "ekfac"),
        dampings=(LAM,),
        eigen_clip=0.0,
        fisher_types=("sampled", "empirical"),
    )
    rows = measure(problem, g, F64, settings, empirical_loss=empirical_loss(rollout, config))
    by = rows_by_key(rows)
    for mode, kind in (("eigen", "kron"), ("ekfac", "ekfac")):
        blocks = dense_blocks(problem, examples, kind, split_bias=False)
        d = torch.cat([damped(b, s.take(g), LAM) for b, s in zip(blocks, problem.slots)])
        row = by["true-fisher", "empirical", "paper", mode, "network"]
        assert row["cosine"] == pytest.approx(cosine(d, x), abs=1e-10)
        assert row["norm_ratio"] == pytest.approx(float(d.norm() / x.norm()), rel=1e-9)
        want = float((true - torch.block_diag(*blocks)).norm() / true.norm())
        assert row["block_rel_error"] == pytest.approx(want, rel=1e-9)
        sampled_row = by["true-fisher", "sampled", "paper", mode, "network"]
        assert abs(row["cosine"] - sampled_row["cosine"]) > 1e-3
        assert abs(row["block_rel_error"] - sampled_row["block_rel_error"]) > 1e-3
    # the references themselves do not depend on the Fisher type
    exact = [r for r in rows if r["damping_mode"] == "exact"]
    assert exact and all("fisher_type" not in r for r in exact)


def test_empirical_needs_its_loss_and_unknown_types_are_refused():
    problem = tiny(6)
    g = some_gradient(problem, 6)
    with pytest.raises(ValueError, match="needs the empirical Fisher pass's loss"):
        measure(problem, g, F64, Settings(variants=("paper",), fisher_types=("empirical",)))
    with pytest.raises(ValueError, match="unknown fisher type 'true'; choose from sampled, emp"):
        measure(problem, g, F64, Settings(variants=("paper",), fisher_types=("true",)))


def more_batches(problem: FisherProblem, count: int, seed: int) -> list[FisherProblem]:
    """``count`` further batches of ``problem``'s policy (other states, actions, noise)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        obs = torch.randn(problem.batch, 4, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            probs = torch.softmax(problem.policy(obs)[0], -1)
        acts = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        noise = torch.randn(problem.batch, generator=gen, dtype=torch.float64)
        out.append(dataclasses.replace(problem, obs=obs, actions=acts, noise=noise))
    return out


@pytest.mark.parametrize("inverse_every", [4, 2], ids=["basis-of-batch-1", "basis-of-batch-3"])
def test_running_ekfac_is_the_trainers_fold(inverse_every):
    """K = 3 Fisher batches, decay 0.9, start rule ``first``. The trainer decomposes at steps
    k ≡ 0 (mod inverse_every) — at step 0 only, or at steps 0 and 2 — restarts s at d_G d_Aᵀ of the
    running factors then, and folds every pass after it: by hand below."""
    problems = more_batches(tiny(7, batch=5), 3, seed=7)
    decay = 0.9
    config = dataclasses.replace(
        F64, stats_decay=decay, running_init="first", inverse_every=inverse_every
    )
    blocks, _ = running_blocks(variants.get("paper"), problems, config, ekfac=True)
    params = [p.detach().clone() for p in problems[0].policy.parameters()]
    examples = [per_example(p, lambda n, lo, v, p=p: fisher_term(p, n, lo, v)) for p in problems]
    for i, slot in enumerate(problems[0].slots):
        a_k, g_k, m_k = [], [], []
        for batch in examples:
            rows = [ex[slot.name] for ex in batch]
            bars = [torch.cat([a, a.new_ones(1)]) for a, _, _ in rows]
            a_k.append(sum(torch.outer(a, a) for a in bars) / len(rows))
            g_k.append(sum(torch.outer(g, g) for _, g, _ in rows) / len(rows))
            m_k.append([slot.matrix(slot.take(flat)) for _, _, flat in rows])
        running_a, running_g = [a_k[0]], [g_k[0]]
        for a, g in zip(a_k[1:], g_k[1:]):
            running_a.append(decay * running_a[-1] + (1 - decay) * a)
            running_g.append(decay * running_g[-1] + (1 - decay) * g)
        scale = basis = None
        for k in range(3):
            if k % inverse_every == 0:
                d_a, q_a = torch.linalg.eigh(running_a[k])
                d_g, q_g = torch.linalg.eigh(running_g[k])
                basis = (q_a, q_g)
                scale = d_g.clamp_min(0)[:, None] * d_a.clamp_min(0)[None, :]
            q_a, q_g = basis
            stat = sum((q_g.T @ m @ q_a) ** 2 for m in m_k[k]) / len(m_k[k])
            scale = decay * scale + (1 - decay) * stat
        q = torch.kron(basis[1], basis[0])
        want = q @ torch.diag(scale.reshape(-1)) @ q.T
        torch.testing.assert_close(blocks[i].ekfac.dense(), want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(blocks[i].factors.A, running_a[-1], rtol=1e-12, atol=1e-14)
    # the policy was not moved by the trainer's steps on zero gradients
    for p, before in zip(problems[0].policy.parameters(), params):
        assert torch.equal(p, before) and p.grad is None


def test_running_empirical_folds_the_empirical_passes():
    """``running-2`` from empirical passes: G is the decay blend of the per-batch G's built by hand
    from the training-loss terms ℓ_n = −Â_n log π(a_n|s_n) + vf_coef (v_n − R_n)² (no
    normalisation here), and differs from the sampled running G."""
    problems = more_batches(tiny(8, batch=5), 2, seed=8)
    decay = 0.9
    config = dataclasses.replace(F64, stats_decay=decay, running_init="first")
    rollouts, losses, g_k = [], [], []
    for k, p in enumerate(problems):
        rollout, run = training_batch(p, 20 + k)
        run = dataclasses.replace(
            run, rollout=dataclasses.replace(run.rollout, normalize_advantages=False)
        )
        rollouts.append(rollout)
        losses.append(empirical_loss(rollout, run))

        def term(n, logits, value, r=rollout, p=p):
            log_pi = F.log_softmax(logits[0], -1)[p.actions[n]]
            return -r.advantages[n] * log_pi + 0.7 * (value[0] - r.returns[n]) ** 2

        g_k.append({s.name: [ex[s.name][1] for ex in per_example(p, term)] for s in p.slots})
    empirical, _ = running_blocks(variants.get("paper"), problems, config, losses)
    sampled, _ = running_blocks(variants.get("paper"), problems, config)
    for i, slot in enumerate(problems[0].slots):
        per_batch = [sum(torch.outer(g, g) for g in b[slot.name]) / 5 for b in g_k]
        want = decay * per_batch[0] + (1 - decay) * per_batch[1]
        torch.testing.assert_close(empirical[i].factors.G, want, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(empirical[i].factors.A, sampled[i].factors.A)
        assert float((sampled[i].factors.G - want).norm()) > 1e-3 * float(want.norm())
