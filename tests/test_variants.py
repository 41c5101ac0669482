"""Oracle tests for the variant contract: every factor against explicit loops (float64, rtol 1e-6).

The brute-force side never calls the library: it extracts each patch with index loops (padding,
stride and dilation by hand) and sums outer products example by example, position by position.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import variants
from variants import FactorStrategy

torch.set_default_dtype(torch.float64)
RTOL = 1e-6
ATOL = 1e-12

# --------------------------------------------------------------------------------------------
# brute force


def brute_patches(module: nn.Module, x: torch.Tensor) -> list[list[list[float]]]:
    """patches[n][t] = list of K floats in (C_in, kh, kw) order; Linear: one position."""
    if isinstance(module, nn.Linear):
        return [[x[n].tolist()] for n in range(x.shape[0])]
    b, c_in, h, w = x.shape
    kh, kw = module.kernel_size
    sh, sw = module.stride
    ph, pw = module.padding
    dh, dw = module.dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = []
    for n in range(b):
        rows = []
        for i, j in itertools.product(range(oh), range(ow)):
            patch = []
            for c, u, v in itertools.product(range(c_in), range(kh), range(kw)):
                r, s = i * sh - ph + u * dh, j * sw - pw + v * dw
                inside = 0 <= r < h and 0 <= s < w
                patch.append(float(x[n, c, r, s]) if inside else 0.0)
            rows.append(patch)
        out.append(rows)
    return out


def brute_derivs(grad_output: torch.Tensor) -> list[list[list[float]]]:
    """ĝ[n][t] = B · grad_output at position t (row-major over (oh, ow))."""
    b = grad_output.shape[0]
    if grad_output.dim() == 2:
        return [[[b * float(v) for v in grad_output[n]]] for n in range(b)]
    _, c, oh, ow = grad_output.shape
    return [
        [
            [b * float(grad_output[n, k, i, j]) for k in range(c)]
            for i, j in itertools.product(range(oh), range(ow))
        ]
        for n in range(b)
    ]


def outer_sum(vectors: list[list[float]]) -> torch.Tensor:
    d = len(vectors[0])
    total = torch.zeros(d, d)
    for vec in vectors:
        for i in range(d):
            for j in range(d):
                total[i, j] += vec[i] * vec[j]
    return total


def brute_factors(name: str, module: nn.Module, x: torch.Tensor, grad_output: torch.Tensor):
    """The DESIGN.md §3 table, computed by explicit loops."""
    patches, derivs = brute_patches(module, x), brute_derivs(grad_output)
    b, t = len(patches), len(patches[0])
    bias = module.bias is not None
    with_one = [[[*p, 1.0] if bias else p for p in rows] for rows in patches]
    omega = outer_sum([p for rows in with_one for p in rows]) / b
    omega_ww = outer_sum([p for rows in patches for p in rows]) / b
    gamma = outer_sum([g for rows in derivs for g in rows]) / (b * t)
    summed = [[sum(rows[s][k] for s in range(t)) for k in range(len(rows[0]))] for rows in derivs]
    summed_cov = outer_sum(summed) / b
    if name == "paper":
        return omega, gamma, None
    if name in ("baselines", "kfac-pytorch"):
        return omega / t**2, gamma * t**2, None
    if name == "ikostrikov":
        return omega_ww / t**2, gamma * t**2, summed_cov if bias else None
    if name == "kfac-reduce":
        means = [
            [sum(rows[s][k] for s in range(t)) / t for k in range(len(rows[0]))]
            for rows in with_one
        ]
        return outer_sum(means) / b, summed_cov, None
    pytest.fail(f"no brute-force oracle for variant {name!r}: add its DESIGN.md §3 row here")


# --------------------------------------------------------------------------------------------
# layers under test; grad_output comes from a real backward of a batch-mean loss

LAYERS = {
    "linear-bias": lambda: nn.Linear(4, 3),
    "linear-nobias": lambda: nn.Linear(5, 2, bias=False),
    "conv-nopad-s1": lambda: nn.Conv2d(2, 3, kernel_size=2),
    "conv-pad1-s2": lambda: nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1),
    "conv-pad2-s3-nobias": lambda: nn.Conv2d(
        1, 2, kernel_size=(3, 2), stride=(3, 2), padding=2, bias=False
    ),
    "conv-dilation2": lambda: nn.Conv2d(2, 2, kernel_size=2, dilation=2, padding=1),
    # C_out > 2T (4 positions): Γ from the (B·T, C) rows, not from per-example products
    "conv-wide-4-positions": lambda: nn.Conv2d(1, 9, kernel_size=(6, 5)),
}


def layer_and_batch(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    module = LAYERS[kind]()
    b = 3
    x = (
        torch.randn(b, module.in_features)
        if isinstance(module, nn.Linear)
        else torch.randn(b, module.in_channels, 7, 6)
    )
    out = module(x)
    weights = torch.randn_like(out)
    captured = {}
    out.register_hook(lambda g: captured.setdefault("g", g))
    ((out * weights).flatten(1).sum(1) ** 2).mean().backward()  # a batch-mean loss
    return module, x, captured["g"]


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("name", variants.names())
def test_factors_match_brute_force(name: str, kind: str) -> None:
    module, x, grad_output = layer_and_batch(kind)
    got = variants.get(name).factors(module, x, grad_output)
    want_a, want_g, want_bias = brute_factors(name, module, x, grad_output)
    torch.testing.assert_close(got.A, want_a, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got.G, want_g, rtol=RTOL, atol=ATOL)
    if want_bias is None:
        assert got.bias_G is None
    else:
        torch.testing.assert_close(got.bias_G, want_bias, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", variants.names())
def test_linear_factors_agree_across_variants(name: str) -> None:
    """For Linear layers every variant gives (1/B)Σ ā āᵀ and (1/B)Σ ĝ ĝᵀ (DESIGN.md §3); one
    with a separate bias block (its oracle has one: ikostrikov) keeps ā's bias part there."""
    module, x, g = layer_and_batch("linear-bias")
    f = variants.get(name).factors(module, x, g)
    ref = variants.get("paper").factors(module, x, g)
    if brute_factors(name, module, x, g)[2] is not None:
        torch.testing.assert_close(f.A, ref.A[:-1, :-1])
        torch.testing.assert_close(f.bias_G, ref.G)
    else:
        torch.testing.assert_close(f.A, ref.A)
    torch.testing.assert_close(f.G, ref.G)


# --------------------------------------------------------------------------------------------
# REFERENCES.md §9: the hand-checkable golden case


def golden_case():
    conv = nn.Conv2d(1, 2, kernel_size=2)
    x = torch.tensor(
        [[[[(9 * n + 3 * i + j) / 10 for j in range(3)] for i in range(3)]] for n in range(2)]
    )
    g = torch.tensor(
        [
            [[[0.1, -0.2], [0.3, 0.0]], [[0.05, 0.1], [-0.1, 0.2]]],
            [[[-0.3, 0.1], [0.0, 0.2]], [[0.0, -0.05], [0.15, 0.1]]],
        ]
    )
    return conv, x, g


OMEGA = torch.tensor(
    [
        [2.6, 2.86, 3.38, 3.64, 2.6],
        [2.86, 3.16, 3.76, 4.06, 3.0],
        [3.38, 3.76, 4.52, 4.9, 3.8],
        [3.64, 4.06, 4.9, 5.32, 4.2],
        [2.6, 3.0, 3.8, 4.2, 4.0],
    ]
)
GAMMA = torch.tensor([[0.14, -0.015], [-0.015, 0.04875]])


def test_golden_values_references_section_9() -> None:
    conv, x, g = golden_case()
    paper = variants.get("paper").factors(conv, x, g)
    torch.testing.assert_close(paper.A, OMEGA)
    torch.testing.assert_close(paper.G, GAMMA)
    bl = variants.get("baselines").factors(conv, x, g)
    assert bl.A[0, 0].item() == pytest.approx(0.1625)
    assert bl.A[4, 4].item() == pytest.approx(0.25)
    torch.testing.assert_close(bl.G, torch.tensor([[2.24, -0.24], [-0.24, 0.78]]))
    ik = variants.get("ikostrikov").factors(conv, x, g)
    torch.testing.assert_close(ik.A, OMEGA[:4, :4] / 16)
    torch.testing.assert_close(ik.bias_G, torch.tensor([[0.08, 0.1], [0.1, 0.205]]))
    # paper's bias-bias block Ω_bb·Γ = T·Γ differs from the exact bias block: structural
    torch.testing.assert_close(OMEGA[4, 4] * GAMMA, torch.tensor([[0.56, -0.06], [-0.06, 0.195]]))


# --------------------------------------------------------------------------------------------
# registry


def test_registry_lists_and_refuses() -> None:
    names = variants.names()
    assert len(names) == len(set(names))
    # the DESIGN.md §3 table, in its order; a new variant registers after them
    assert names[:5] == ["paper", "baselines", "kfac-pytorch", "ikostrikov", "kfac-reduce"]
    with pytest.raises(
        ValueError, match=r"unknown variant 'nope'; valid variants: paper, baselines"
    ):
        variants.get("nope")

    class Duplicate(FactorStrategy):
        name = "paper"
        summary = "dup"
        running_init = variants.InitRule("first")

        def from_batch(self, batch):
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        variants.register(Duplicate())


def test_every_variant_documents_itself() -> None:
    for name in variants.names():
        strategy = variants.get(name)
        module = __import__(type(strategy).__module__, fromlist=["x"])
        doc = module.__doc__ or ""
        assert "Source:" in doc and "Running average" in doc, name
        assert strategy.summary and len(strategy.summary) < 100
