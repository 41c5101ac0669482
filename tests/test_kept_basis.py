"""The eigen mode's step through the kept eigenvectors (kfac_bench/curvature/kept_basis.py)
against a dense Kronecker solve, and against the four full products it replaces."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature import KFAC, kept_basis
from kfac_bench.curvature.inverse import invert_pair


def low_rank_factor(dim: int, rank: int, gen: torch.Generator, dtype) -> torch.Tensor:
    """XᵀX / rank of ``rank`` random rows: dim − rank eigenvalues at (numerically) zero."""
    x = torch.randn(rank, dim, generator=gen, dtype=torch.float64)
    return (x.T @ x / rank).to(dtype)


def dense_clipped_step(a, g, m, tau: float, damping: float) -> torch.Tensor:
    """(A_τ ⊗ G_τ + λI)⁻¹ vec(M) by a dense solve, A_τ/G_τ the factors with every eigenvalue ≤ τ
    set to 0 (column-major vec: (A ⊗ G) vec(M) = vec(G M A))."""

    def clipped(f):
        vals, vecs = torch.linalg.eigh(f.double())
        return vecs @ torch.diag(torch.where(vals > tau, vals, 0.0)) @ vecs.T

    c, k = m.shape
    fisher = torch.kron(clipped(a), clipped(g)) + damping * torch.eye(c * k, dtype=torch.float64)
    vec = m.double().T.reshape(-1)
    return torch.linalg.solve(fisher, vec).reshape(k, c).T


CONFIG = KfacConfig(dtype="float64", damping_mode="eigen", eigen_clip=1e-6, damping=0.01)


@pytest.mark.parametrize(
    ("c", "k", "g_rank", "a_rank"),
    [(6, 40, 3, 8), (12, 30, 12, 5), (5, 33, 2, 33)],
    ids=["both-clipped", "only-A-clipped", "A-full-rank"],
)
def test_kept_path_equals_the_dense_kronecker_solve(c, k, g_rank, a_rank):
    gen = torch.Generator().manual_seed(c * k)
    a = low_rank_factor(k, a_rank, gen, torch.float64)
    g = low_rank_factor(c, g_rank, gen, torch.float64)
    m = torch.randn(c, k, generator=gen, dtype=torch.float64)
    pair = invert_pair(a, g, CONFIG, "layer")
    got = pair.apply(m)
    p, r = int((pair.g_vals > 0).sum()), int((pair.a_vals > 0).sum())
    assert (p, r) == (min(g_rank, c), min(a_rank, k))
    assert (pair._kept is not None) == kept_basis.worthwhile(c, k, p, r)
    expected = dense_clipped_step(a, g, m, CONFIG.eigen_clip, CONFIG.damping)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kept_path_equals_the_four_full_products(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    a = low_rank_factor(200, 40, gen, dtype)
    g = low_rank_factor(24, 10, gen, dtype)
    m = torch.randn(24, 200, generator=gen, dtype=torch.float64).to(dtype)
    config = dataclasses.replace(CONFIG, dtype="float64" if dtype == torch.float64 else "float32")
    kept = invert_pair(a, g, config, "layer")
    got = kept.apply(m)
    assert kept._kept is not None
    monkeypatch.setattr(kept_basis, "GAIN", 0.0)
    full = invert_pair(a, g, config, "layer")
    expected = full.apply(m)
    assert full._kept is None
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * expected.abs().max().item())
    torch.testing.assert_close(kept.apply(m), got, rtol=0, atol=0)  # the cached basis, again


def test_the_rule_on_the_nature_fc():
    """Measured counts (Breakout, the decomposition of update 21: 1 760 of 3137 A and 156 of
    512 G eigenvalues ≤ 10⁻⁶) take the kept path at ~0.39 of the FLOPs; nothing clipped, or
    a few, keep the full products; and the FLOP counts are the products' shapes."""
    c, k = 512, 3137
    assert kept_basis.kept_flops(c, k, c, k) == kept_basis.full_flops(c, k)  # the same products
    # (p, C)·(C, K), (p, K)·(K, r), (C, p)·(p, r), (C, r)·(r, K)
    assert kept_basis.kept_flops(c, k, 7, 11) == 7 * c * k + 7 * k * 11 + c * 7 * 11 + c * 11 * k
    ratio = kept_basis.kept_flops(c, k, 356, 1377) / kept_basis.full_flops(c, k)
    assert 0.38 < ratio < 0.40
    assert kept_basis.worthwhile(c, k, 356, 1377)
    assert not kept_basis.worthwhile(c, k, c, k)
    assert not kept_basis.worthwhile(c, k, c, 3000)
    assert kept_basis.worthwhile(128, 1025, 126, 816)  # MinAtar's fc at 120k steps: 0.80
    assert not kept_basis.worthwhile(128, 1025, 128, 1000)


def test_kfac_steps_through_the_kept_basis_match_the_full_products(monkeypatch):
    """Three float32 K-FAC steps (``paper``, eigen mode, τ = 10⁻⁶) of a net whose Linear(400, ·)
    sees 48 rows a batch (A: 401², rank ≤ 144 after three batches, so the kept path) equal, to
    float tolerance, the same steps with the kept path switched off."""

    def run() -> tuple[list[torch.Tensor], bool]:
        torch.manual_seed(5)
        net = nn.Sequential(nn.Flatten(), nn.Linear(400, 32), nn.Tanh(), nn.Linear(32, 6))
        net = net.float()
        config = KfacConfig(dtype="float32", eigen_clip=1e-6, cold_iters=0)
        kfac = KFAC(net, variants.get("paper"), config, lr=0.05)
        gen = torch.Generator().manual_seed(9)
        for _ in range(3):
            x = torch.randn(48, 400, generator=gen, dtype=torch.float32)
            actions = torch.randint(0, 6, (48,), generator=gen)
            with kfac.fisher_pass() as fisher:
                logits = net(x)
                fisher.backward(
                    torch.distributions.Categorical(logits=logits).log_prob(actions).mean()
                )
            kfac.zero_grad()
            torch.nn.functional.cross_entropy(logits, actions).backward()
            kfac.step()
        used = kfac.layers["1"].weights._kept is not None
        return [p.detach().clone() for p in net.parameters()], used

    kept, used_kept = run()
    monkeypatch.setattr(kept_basis, "GAIN", 0.0)
    full, used_full = run()
    assert used_kept and not used_full
    for got, expected in zip(kept, full):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
