"""Decompositions for every factor size the benchmark networks produce, and the whole per-network
inverse under each ``kfac.damping_mode``.

Methods (what ``kfac_bench/curvature/inverse.py`` does per mode, REFERENCES.md §8.2):

* ``eigh`` — ``torch.linalg.eigh`` (LAPACK syevd): the ``eigen`` mode of every reference
  (baselines ``self_adjoint_eig``, KFAC-PyTorch ``symeig``, ACKTR-PyTorch ``linalg.eigh``).
* ``cholesky`` — Cholesky of X + γI, then ``cholesky_solve`` against a 64-column right-hand side
  (a gradient block): the cheapest way to apply a Tikhonov-damped factor.
* ``inverse`` — the explicit damped inverse ``cholesky_inverse`` that the ``tikhonov`` modes keep
  (the seed notebook's ``(A + γI)⁻¹``).

Sizes are the default (``paper``) factor dimensions: A = K+1 and G = C_out of every layer.
Decompositions run on one thread (``kfac.inverse_threads = 1``, what the ``fast`` setting's
background thread uses): on the shared 2-core machine a two-thread syevd of the 3137² factor
takes 5–60 s against 4–8 s on one thread (an OpenMP thread preempted by another job stalls the
other at every barrier). The ``-torch-threads`` rows measure eigh with torch's own thread count
on the sizes up to 1025.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from benchlib import LAYERS, layer_inputs, pedantic, spd_matrix

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature.inverse import invert_pair, torch_threads

DTYPES = {"f32": torch.float32, "f64": torch.float64}
GAMMA = 0.1  # √λ for λ = 0.01: the tikhonov default
QUICK_SIZE = 48


def _sizes() -> list[int]:
    sizes = set()
    for case in LAYERS:
        _, k, c, bias = case.geometry(case.module())
        sizes.update({k + 1 if bias else k, c})
    return sorted(sizes, reverse=True)


SIZES = _sizes()
PARAMS = [
    (m, n, d, 1) for n in SIZES for d in ("f32", "f64") for m in ("eigh", "cholesky", "inverse")
]
# eigh again with torch's own thread count (what `_invert_all` uses unless kfac.inverse_threads is
# set), on the sizes where a slow multi-threaded syevd cannot eat the time budget
PARAMS += [("eigh", n, "f32", 0) for n in SIZES if n <= 1025]


def _flops(method: str, n: int) -> float:
    """Textbook operation counts: syevd with vectors ≈ 9n³ (Golub & Van Loan), Cholesky n³/3
    (+ 2·n²·64 for the solve), explicit inverse from the factor n³/3 + 2n³/3."""
    return {"eigh": 9.0 * n**3, "cholesky": n**3 / 3 + 4.0 * n * n * 64, "inverse": n**3}[method]


def _id(method: str, n: int, dtype: str, threads: int) -> str:
    return f"inverse-{method}-{n}-{dtype}" + ("-torch-threads" if threads == 0 else "")


@pytest.mark.parametrize(("method", "n", "dtype", "threads"), PARAMS, ids=[_id(*p) for p in PARAMS])
def test_decomposition(benchmark, device, quick, method, n, dtype, threads):
    with torch_threads(threads):
        _decomposition(benchmark, device, quick, method, n, dtype)
    benchmark.extra_info["threads"] = threads or torch.get_num_threads()


def _decomposition(benchmark, device, quick, method, n, dtype):
    size = min(n, QUICK_SIZE) if quick else n
    x = spd_matrix(size, DTYPES[dtype]).to(device)
    eye = torch.eye(size, dtype=x.dtype, device=device)
    tol = 2e-3 if dtype == "f32" else 1e-9
    if method == "eigh":
        vals, vecs = pedantic(benchmark, lambda: torch.linalg.eigh(x), device, target_s=3.0)
        rebuilt = (vecs * vals) @ vecs.T
        assert float((rebuilt - x).norm() / x.norm()) < tol
        torch.testing.assert_close(vecs.T @ vecs, eye, rtol=0, atol=50 * tol)
    elif method == "cholesky":
        rhs = torch.randn(size, 64, generator=torch.Generator().manual_seed(size), dtype=x.dtype)
        rhs = rhs.to(device)
        damped = x + GAMMA * eye

        def solve():
            chol, info = torch.linalg.cholesky_ex(damped)
            return torch.cholesky_solve(rhs, chol), info

        sol, info = pedantic(benchmark, solve, device, target_s=3.0)
        assert int(info) == 0
        assert float((damped @ sol - rhs).norm() / rhs.norm()) < tol
    else:
        damped = x + GAMMA * eye

        def invert():
            return torch.cholesky_inverse(torch.linalg.cholesky(damped))

        inv = pedantic(benchmark, invert, device, target_s=3.0)
        assert float((damped @ inv - eye).norm() / size**0.5) < tol
    benchmark.extra_info.update(
        kind="decomposition",
        method=method,
        n=size,
        dtype=dtype,
        flops=_flops(method, size),
        device=str(device),
    )


# ---------------------------------------------------------------------------------------------
# the inverse of one whole network, per damping mode (what KFAC._invert_all does)

NETS = ["nature", "minatar", "mlp"]
MODES = ["eigen", "tikhonov", "tikhonov-pi"]
NET_PARAMS = [(net, mode) for net in NETS for mode in MODES]


def _net_factors(net: str, quick: bool, device: torch.device):
    """Per-layer (A, G) of the ``paper`` variant on a batch of realistic inputs, float32."""
    pairs = {}
    for case in (c for c in LAYERS if c.net == net):
        module = case.module()
        batch = 4 if quick else case.batch
        x, g = layer_inputs(case, module, batch, torch.device("cpu"))
        f = variants.get("paper").factors(module, x, g)
        a = f.A[:QUICK_SIZE, :QUICK_SIZE] if quick else f.A  # a principal block stays SPD
        eye = torch.eye(a.shape[0])
        pairs[case.layer] = (a + 1e-4 * eye).to(device), f.G.to(device)  # ≈ a running average
    return pairs


@pytest.mark.parametrize(
    ("net", "mode"), NET_PARAMS, ids=[f"invert-{n}-{m}-f32" for n, m in NET_PARAMS]
)
def test_invert_network(benchmark, device, quick, net, mode):
    pairs = _net_factors(net, quick, device)
    config = dataclasses.replace(KfacConfig(), damping_mode=mode, inverse_threads=1)

    def invert_all():
        with torch_threads(config.inverse_threads):
            return {name: invert_pair(a, g, config, name) for name, (a, g) in pairs.items()}

    inverses = pedantic(benchmark, invert_all, device, target_s=3.0, max_rounds=3)
    # every layer's Δ solves its damped Kronecker system (per-factor clipped spectra for eigen):
    # a small *backward* error ‖residual‖ / (‖left‖‖Δ‖‖right‖ + ‖M‖), computed in float64,
    # says Δ is the exact solution for factors within round-off of these (f32 factors can have
    # condition numbers near 1e6, so the forward error says little).
    lam = config.damping
    for name, (a, g) in pairs.items():
        inv = inverses[name]
        m = torch.randn(g.shape[0], a.shape[0], generator=torch.Generator().manual_seed(3))
        delta = inv.apply(m.to(device)).double().cpu()
        m = m.double()
        if mode == "eigen":
            qa, qg = inv.a.double().cpu(), inv.g.double().cpu()
            left = (qg * inv.g_vals.double().cpu()) @ qg.T
            right = (qa * inv.a_vals.double().cpu()) @ qa.T
            rebuilt = float((right - a.double().cpu()).norm() / a.double().cpu().norm())
            assert rebuilt < 1e-4, name
            residual = left @ delta @ right + lam * delta - m
            scale = left.norm() * delta.norm() * right.norm() + lam * delta.norm() + m.norm()
        else:
            a_shift, g_shift = _shifts(a, g, config)
            left = g.double().cpu() + g_shift * torch.eye(g.shape[0], dtype=torch.float64)
            right = a.double().cpu() + a_shift * torch.eye(a.shape[0], dtype=torch.float64)
            residual = left @ delta @ right - m
            scale = left.norm() * delta.norm() * right.norm() + m.norm()
        assert float(residual.norm() / scale) < 1e-5, name
    dims = {name: [a.shape[0], g.shape[0]] for name, (a, g) in pairs.items()}
    benchmark.extra_info.update(
        kind="invert", net=net, mode=mode, dtype="f32", dims=dims, device=str(device)
    )


def _shifts(a: torch.Tensor, g: torch.Tensor, config: KfacConfig) -> tuple[float, float]:
    gamma = config.damping**0.5
    if config.damping_mode == "tikhonov":
        return gamma, gamma
    pi = float(((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0])) ** 0.5)
    return pi * gamma, gamma / pi
