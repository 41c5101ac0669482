"""The eigen mode's preconditioning of one layer, through the kept eigenvectors
(``kfac_bench/curvature/kept_basis.py``) against the four full products it replaces.

The eigenbases are random orthogonal matrices with as many eigenvalues clipped to 0 as a real run
had (``kfac-bench train --env BreakoutNoFrameskip-v4``, ``atari-tuned``: updates.csv's
``diag/<layer>/{A,G}_clipped``); ``kept`` is what ``FactorPairInverse.apply`` picks for them,
``full`` the same apply with the kept path switched off (``kept_basis.GAIN = 0``). Both give the
same Δ (asserted here to float tolerance; the oracle tests are ``tests/test_kept_basis.py``).
"""

from __future__ import annotations

import pytest
import torch
from benchlib import pedantic

from kfac_bench.curvature import kept_basis
from kfac_bench.curvature.inverse import FactorPairInverse

# (id, C, K, G eigenvalues clipped, A eigenvalues clipped)
CASES = [
    # Nature fc (512 × 3137): the decomposition of update 21 (the second after the cold start),
    # and at 120k steps, where the counts had levelled off (1 263–1 276 of A from 90k to 122k)
    ("nature-fc-update21", 512, 3137, 156, 1760),
    ("nature-fc-120k", 512, 3137, 32, 1265),
    ("nature-fc-nothing-clipped", 512, 3137, 0, 0),
    # MinAtar fc (128 × 1025; ``minatar-tuned``, MinAtar/Breakout-v1): at 40k steps, and at 120k,
    # the fewest clipped of a 300k-step run (209–224 of A from 100k to 200k steps)
    ("minatar-fc-40k", 128, 1025, 6, 296),
    ("minatar-fc-120k", 128, 1025, 2, 209),
]
PATHS = ["kept", "full"]
QUICK = (16, 48)  # (C, K) in quick mode, clipped counts scaled alike


def _pair(c: int, k: int, g_clipped: int, a_clipped: int, device) -> FactorPairInverse:
    gen = torch.Generator().manual_seed(c + k)

    def basis(n: int, clipped: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
        vals = torch.rand(n, generator=gen).add_(1e-3).sort().values
        vals[:clipped] = 0.0  # eigh's ascending order: the clipped ones first
        return q.to(device), vals.to(device)

    g, g_vals = basis(c, g_clipped)
    a, a_vals = basis(k, a_clipped)
    diagnostics = torch.zeros(6, device=device)
    return FactorPairInverse("eigen", a, g, a_vals, g_vals, 0.01, diagnostics)


@pytest.mark.parametrize(("path"), PATHS)
@pytest.mark.parametrize(
    ("case", "c", "k", "g_clipped", "a_clipped"), CASES, ids=[c[0] for c in CASES]
)
def test_precondition(
    benchmark, device, quick, monkeypatch, case, c, k, g_clipped, a_clipped, path
):
    if quick:
        g_clipped, a_clipped = g_clipped * QUICK[0] // c, a_clipped * QUICK[1] // k
        c, k = QUICK
    m = torch.randn(c, k, generator=torch.Generator().manual_seed(1)).to(device)
    reference = _pair(c, k, g_clipped, a_clipped, device)
    monkeypatch.setattr(kept_basis, "GAIN", 0.0)
    expected = reference.apply(m)
    monkeypatch.undo()
    if path == "full":
        monkeypatch.setattr(kept_basis, "GAIN", 0.0)
    pair = _pair(c, k, g_clipped, a_clipped, device)
    delta = pedantic(benchmark, lambda: pair.apply(m), device, target_s=2.0)
    used = "kept" if pair._kept is not None else "full"
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    p, r = c - g_clipped, k - a_clipped
    benchmark.extra_info.update(
        kind="precondition",
        case=case,
        path=path,
        used=used,
        c=c,
        k=k,
        kept=[p, r],
        flops=2.0
        * (kept_basis.kept_flops(c, k, p, r) if used == "kept" else kept_basis.full_flops(c, k)),
        flop_fraction=kept_basis.kept_flops(c, k, p, r) / kept_basis.full_flops(c, k),
        device=str(device),
    )
