"""Decompositions of factors with zero rows (dead units): kfac_bench/curvature/inverse.py ``_eigh``
leaves them out of the dense eigh; the spectrum, the rebuilt factor and every eigen/ekfac step
must be what one dense decomposition gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kfac_bench.config import KfacConfig
from kfac_bench.curvature import inverse
from kfac_bench.curvature.inverse import invert_pair


def factor_with_dead_units(dim: int, dead: list[int], rank: int, seed: int) -> torch.Tensor:
    """XᵀX / rows of random rows whose columns ``dead`` are 0 in every row (float64)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rank, dim, generator=gen, dtype=torch.float64)
    x[:, dead] = 0.0
    return x.T @ x / rank


def dense_step(a, g, m, damping: float) -> torch.Tensor:
    """(A ⊗ G + λI)⁻¹ vec(M) by a dense solve (column-major vec: (A ⊗ G) vec(M) = vec(G M A))."""
    c, k = m.shape
    fisher = torch.kron(a, g) + damping * torch.eye(c * k, dtype=torch.float64)
    return torch.linalg.solve(fisher, m.T.reshape(-1)).reshape(k, c).T


def test_eigh_without_the_zero_rows_is_an_eigendecomposition_of_the_whole_factor():
    a = factor_with_dead_units(30, [0, 7, 8, 29], rank=40, seed=1)
    vals, vecs = inverse._eigh(a, "A")
    eye = torch.eye(30, dtype=torch.float64)
    torch.testing.assert_close(vecs.T @ vecs, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close((vecs * vals) @ vecs.T, a, rtol=0, atol=1e-12)
    expected = torch.linalg.eigvalsh(a)  # the dense spectrum: four zeros and 26 positive
    torch.testing.assert_close(vals.sort().values, expected, rtol=0, atol=1e-12)
    assert (vals[:4] == 0).all() and (vals[4:] > 1e-3).all()
    for unit, column in zip([0, 7, 8, 29], range(4)):
        assert vecs[unit, column] == 1.0 and vecs[:, column].abs().sum() == 1.0


def test_eigh_of_a_factor_without_zero_rows_is_torchs_eigh_bitwise():
    a = factor_with_dead_units(20, [], rank=25, seed=2)
    vals, vecs = inverse._eigh(a, "A")
    expected_vals, expected_vecs = torch.linalg.eigh(a)
    assert torch.equal(vals, expected_vals) and torch.equal(vecs, expected_vecs)


def test_eigh_of_an_all_zero_factor_is_the_standard_basis():
    vals, vecs = inverse._eigh(torch.zeros(5, 5, dtype=torch.float64), "A")
    assert torch.equal(vals, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(vecs, torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["eigen", "ekfac"])
def test_steps_with_dead_units_equal_the_dense_kronecker_solve(mode):
    """τ = 0 (nothing clipped): Δ = (A ⊗ G + λI)⁻¹ vec(M), the dead units' rows and columns of
    M included (M is random there, so the 1/λ directions are exercised)."""
    a = factor_with_dead_units(24, [3, 4, 20], rank=50, seed=3)
    g = factor_with_dead_units(6, [5], rank=50, seed=4)
    m = torch.randn(6, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    config = KfacConfig(dtype="float64", damping_mode=mode, eigen_clip=0.0, damping=0.05)
    got = invert_pair(a, g, config, "layer").apply(m)
    torch.testing.assert_close(got, dense_step(a, g, m, 0.05), rtol=1e-9, atol=1e-9)


def test_float32_step_with_dead_units_matches_the_dense_eigh_step(monkeypatch):
    """What the trainer runs (float32, τ = 10⁻⁶, so the kept basis too): the trimmed eigh and one
    dense eigh of the whole factor give the same Δ to float tolerance."""
    a = factor_with_dead_units(300, list(range(0, 300, 7)), rank=120, seed=6).float()
    g = factor_with_dead_units(20, [2, 11], rank=60, seed=7).float()
    m = torch.randn(20, 300, generator=torch.Generator().manual_seed(8), dtype=torch.float32)
    config = dataclasses.replace(KfacConfig(), damping_mode="eigen")
    trimmed = invert_pair(a, g, config, "layer").apply(m)
    monkeypatch.setattr(inverse, "_eigh", inverse._eigh_dense)
    dense = invert_pair(a, g, config, "layer").apply(m)
    torch.testing.assert_close(trimmed, dense, rtol=1e-4, atol=1e-4 * dense.abs().max().item())
