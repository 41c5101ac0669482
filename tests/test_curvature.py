"""Curvature core against dense oracles: exact Fisher blocks, dense solves, KL, recurrences."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from kfac_oracles import assert_batch1_factors_are_exact
from torch import nn
from torch.func import functional_call, grad

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature import KFAC, InitRule, KfacError
from kfac_bench.curvature.adapters import UnsupportedLayerError
from kfac_bench.curvature.inverse import invert_pair
from kfac_bench.curvature.running import RunningAverage

torch.set_default_dtype(torch.float64)

F64 = KfacConfig(dtype="float64")


def conv_batch(seed=0, b=4):
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1)
    x = torch.randn(b, 2, 8, 8)
    out = conv(x)
    w = torch.randn_like(out)
    g = torch.autograd.grad(((out * w).flatten(1).sum(1) ** 2).mean(), out)[0]
    return conv, x, g


# --------------------------------------------------------------------------------------------
# split invariance and where it breaks


@pytest.mark.parametrize("name", ["baselines", "kfac-pytorch"])
def test_scaled_variants_have_papers_kronecker_product(name):
    conv, x, g = conv_batch()
    p = variants.get("paper").factors(conv, x, g)
    s = variants.get(name).factors(conv, x, g)
    assert not torch.allclose(p.A, s.A)  # the split differs (T = 16) ...
    torch.testing.assert_close(torch.kron(s.G, s.A), torch.kron(p.G, p.A))  # ... the product not


def precondition(name: str, config: KfacConfig, conv, x, g, grad_matrix):
    f = variants.get(name).factors(conv, x, g)
    return invert_pair(f.A, f.G, config, name).apply(grad_matrix), f


def test_eigen_tau0_same_step_and_clipping_breaks_it():
    conv, x, g = conv_batch()
    m = torch.randn(3, 2 * 9 + 1)
    exact = dataclasses.replace(F64, eigen_clip=0.0, damping=1e-3)
    d_paper, fp = precondition("paper", exact, conv, x, g, m)
    d_bl, _ = precondition("baselines", exact, conv, x, g, m)
    torch.testing.assert_close(d_paper, d_bl, rtol=1e-9, atol=1e-12)

    # τ between λ_min(Ω)/T² and λ_min(Ω): paper keeps λ_min(Ω), baselines (A = Ω/T²) zeroes it
    t = 16
    lam_min = torch.linalg.eigvalsh(fp.A)[0].item()
    tau = lam_min / t
    assert 0 < lam_min / t**2 < tau < lam_min
    clipped = dataclasses.replace(exact, eigen_clip=tau)
    pair_p = invert_pair(fp.A, fp.G, clipped, "paper")
    fb = variants.get("baselines").factors(conv, x, g)
    pair_b = invert_pair(fb.A, fb.G, clipped, "baselines")
    assert pair_p.diagnostics[4].item() == 0 and pair_b.diagnostics[4].item() >= 1
    diff = (pair_p.apply(m) - pair_b.apply(m)).norm() / pair_p.apply(m).norm()
    assert diff > 1e-2


def test_full_optimizer_step_agrees_for_paper_and_baselines_at_tau0():
    """Through capture, running average, inverse and step: identical parameter updates."""
    deltas = {}
    for name in ("paper", "baselines"):
        torch.manual_seed(3)
        net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 3))
        cfg = dataclasses.replace(
            F64, eigen_clip=0.0, running_init="first", trust_region="none", momentum=0.0
        )
        kfac = KFAC(net, variants.get(name), cfg, lr=0.1)
        x = torch.randn(6, 2, 8, 8)
        a = torch.randint(0, 3, (6,))
        with kfac.fisher_pass() as fisher:
            logits = net(x)
            fisher.backward(torch.distributions.Categorical(logits=logits).log_prob(a).mean())
        kfac.zero_grad()
        (logits**2).mean().backward()
        before = [p.clone() for p in net.parameters()]
        kfac.step()
        deltas[name] = [p - b for p, b in zip(net.parameters(), before)]
    for dp, db in zip(deltas["paper"], deltas["baselines"]):
        torch.testing.assert_close(dp, db, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------------------------
# damping modes against dense solves (PyTorch row-major vec: F̃ = kron(G, A))


def dense(kron_matrix, m):
    return kron_matrix @ m.reshape(-1)


@pytest.mark.parametrize("mode", ["eigen", "tikhonov", "tikhonov-pi"])
def test_damping_modes_match_dense_formulas(mode):
    conv, x, g = conv_batch(1)
    f = variants.get("paper").factors(conv, x, g)
    m = torch.randn(3, 19)
    lam = 0.05
    cfg = dataclasses.replace(F64, damping=lam, damping_mode=mode, eigen_clip=0.0)
    got = invert_pair(f.A, f.G, cfg, "conv").apply(m).reshape(-1)
    ia, ig = torch.eye(19), torch.eye(3)
    if mode == "eigen":
        want = torch.linalg.solve(torch.kron(f.G, f.A) + lam * torch.eye(57), m.reshape(-1))
    elif mode == "tikhonov":
        s = math.sqrt(lam)
        want = dense(torch.kron(torch.linalg.inv(f.G + s * ig), torch.linalg.inv(f.A + s * ia)), m)
    else:
        pi = math.sqrt((torch.trace(f.A) / 19 / (torch.trace(f.G) / 3)).item())
        s = math.sqrt(lam)
        want = dense(
            torch.kron(torch.linalg.inv(f.G + s / pi * ig), torch.linalg.inv(f.A + pi * s * ia)), m
        )
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_eigen_apply_reuses_its_scaling_only_for_its_own_damping():
    """The eigen mode keeps 1/(d_G d_Aᵀ + λ) from its first apply: a second apply on another M
    and a copy with another λ (``dataclasses.replace``, as the fidelity tool does) both still
    equal the dense solve (A⊗G + λI)⁻¹ vec(M)."""
    conv, x, g = conv_batch(3)
    f = variants.get("paper").factors(conv, x, g)
    cfg = dataclasses.replace(F64, damping=0.05, damping_mode="eigen", eigen_clip=0.0)
    pair = invert_pair(f.A, f.G, cfg, "conv")
    first, second = torch.randn(3, 19), torch.randn(3, 19)
    pair.apply(first)
    for lam, inverse, m in (
        (0.05, pair, second),
        (0.3, dataclasses.replace(pair, damping=0.3), second),
    ):
        want = torch.linalg.solve(torch.kron(f.G, f.A) + lam * torch.eye(57), m.reshape(-1))
        torch.testing.assert_close(inverse.apply(m).reshape(-1), want, rtol=1e-8, atol=1e-10)


def test_tikhonov_pi_is_split_invariant_but_tikhonov_is_not():
    conv, x, g = conv_batch(2)
    m = torch.randn(3, 19)
    out = {}
    for mode in ("tikhonov", "tikhonov-pi"):
        cfg = dataclasses.replace(F64, damping=0.01, damping_mode=mode)
        p, _ = precondition("paper", cfg, conv, x, g, m)
        b, _ = precondition("baselines", cfg, conv, x, g, m)
        out[mode] = ((p - b).norm() / p.norm()).item()
    assert out["tikhonov-pi"] < 1e-9
    assert out["tikhonov"] > 1e-3


def test_separate_bias_block_is_damped_inverse():
    conv, x, g = conv_batch(4)
    f = variants.get("ikostrikov").factors(conv, x, g)
    gb = torch.randn(3)
    one = torch.ones(1, 1)
    got = invert_pair(one, f.bias_G, dataclasses.replace(F64, eigen_clip=0.0), "b").apply(
        gb[:, None]
    )
    want = torch.linalg.solve(f.bias_G + 0.01 * torch.eye(3), gb)
    torch.testing.assert_close(got[:, 0], want)


# --------------------------------------------------------------------------------------------
# K-FAC is exact for one Linear layer and batch size 1


@pytest.mark.parametrize("name", variants.names())
def test_linear_batch1_kron_equals_exact_fisher_block(name):
    """Every variant is exact here (DESIGN.md §3: on Linear layers all give ā āᵀ and ĝ ĝᵀ):
    kron(G, A) is the exact [W | b] block, or, for a variant with a separate bias block, kron(G, A)
    the exact W–W block and bias_G the exact b–b block."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(1, 4)
    action = torch.tensor([1])

    def loss_fn(params, xs):
        logits = functional_call(layer, params, (xs,))
        return torch.log_softmax(logits, -1)[0, action[0]]

    params = {k: v.detach() for k, v in layer.named_parameters()}
    per_example = grad(loss_fn)(params, x)

    out = layer(x)
    g = torch.autograd.grad(torch.log_softmax(out, -1)[0, action[0]], out)[0]
    assert_batch1_factors_are_exact(variants.get(name).factors(layer, x, g), per_example)


def test_linear_single_input_kron_equals_true_fisher_expectation_over_actions():
    """Rows (x, a) for every action a weighted by √(|A|·p_a): G = diag(p) − ppᵀ exactly."""
    torch.manual_seed(1)
    layer = nn.Linear(5, 4)
    x = torch.randn(1, 5)
    p = torch.softmax(layer(x), -1).detach()[0]
    xs = x.repeat(4, 1)
    actions = torch.arange(4)
    weight = torch.sqrt(4 * p).detach()

    params = {k: v.detach() for k, v in layer.named_parameters()}

    def logp(params, xi, ai):
        return torch.log_softmax(functional_call(layer, params, (xi[None],)), -1)[0, ai]

    per_action = [grad(logp)(params, x[0], a) for a in range(4)]
    vecs = torch.stack(
        [torch.cat([g["weight"], g["bias"][:, None]], dim=1).reshape(-1) for g in per_action]
    )
    exact = (p[:, None, None] * vecs[:, :, None] * vecs[:, None, :]).sum(0)

    out = layer(xs)
    loss = (weight * torch.log_softmax(out, -1)[actions, actions]).mean()
    g = torch.autograd.grad(loss, out)[0]
    f = variants.get("paper").factors(layer, xs, g)
    torch.testing.assert_close(torch.kron(f.G, f.A), exact)


# --------------------------------------------------------------------------------------------
# trust region


@pytest.mark.parametrize("rule", ["baselines", "acktr-paper", "notebook", "none"])
def test_nu_matches_formula(rule):
    cfg = dataclasses.replace(F64, trust_region=rule, kl_clip=0.002, max_nu=1.0)
    kfac = KFAC(nn.Linear(2, 2), variants.get("paper"), cfg, lr=0.3)
    for q in (1e-4, 0.5, 40.0):
        nu = kfac._trust_region(torch.tensor(q), 0.3).item()
        want = {
            "baselines": min(1.0, math.sqrt(0.002 / (0.09 * q))),
            "acktr-paper": min(1.0, math.sqrt(2 * 0.002 / (0.09 * q + 1e-6))),
            "notebook": min(1.0, math.sqrt(0.002 / (0.5 * q + 1e-8))),
            "none": 1.0,
        }[rule]
        assert nu == pytest.approx(want, rel=1e-12)


def test_measured_kl_matches_predicted_for_small_step():
    """Toy categorical policy, single input: K-FAC is the exact Fisher; measured KL ≈ ½(lrν)²q."""
    torch.manual_seed(5)
    layer = nn.Linear(6, 4)
    x = torch.randn(1, 6)
    cfg = dataclasses.replace(
        F64, damping=1e-8, eigen_clip=0.0, momentum=0.0, trust_region="baselines", kl_clip=1e-5
    )
    kfac = KFAC(layer, variants.get("paper"), cfg, lr=0.5)
    xs, actions = x.repeat(4, 1), torch.arange(4)
    with kfac.fisher_pass() as fisher:
        out = layer(xs)
        p = torch.softmax(out, -1).detach()[0]
        fisher.backward((torch.sqrt(4 * p) * torch.log_softmax(out, -1)[actions, actions]).mean())
    old = torch.log_softmax(layer(x), -1).detach()
    kfac.zero_grad()
    advantages = torch.tensor([1.0, -0.5, 0.3, -0.8])
    (-(advantages * torch.log_softmax(layer(xs), -1)[actions, actions]).mean()).backward()
    info = kfac.step()
    new = torch.log_softmax(layer(x), -1).detach()
    measured = (old.exp() * (old - new)).sum().item()
    assert info.nu.item() < 1.0  # the clip is active: lr²ν²q = δ
    assert info.predicted_kl.item() == pytest.approx(0.5 * 1e-5, rel=1e-9)
    assert measured == pytest.approx(info.predicted_kl.item(), rel=0.05)


# --------------------------------------------------------------------------------------------
# running averages


def stats(k, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, n, generator=gen) for _ in range(k)]


def test_running_average_first_batch_init():
    s = stats(4)
    avg = RunningAverage(0.9, InitRule("first"), torch.float64)
    for x in s:
        avg.update(x)
    want = s[0]
    for x in s[1:]:
        want = 0.9 * want + 0.1 * x
    torch.testing.assert_close(avg.value, want)


def test_running_average_identity_init():
    s = stats(3)
    avg = RunningAverage(0.95, InitRule("identity"), torch.float64)
    avg.update(s[0])
    torch.testing.assert_close(avg.value, 0.95 * torch.eye(3) + 0.05 * s[0])
    avg.update(s[1])
    avg.update(s[2])
    want = torch.eye(3)
    for x in s:
        want = 0.95 * want + 0.05 * x
    torch.testing.assert_close(avg.value, want)


def test_running_average_zeros_average_is_the_mean_so_far_then_baselines_then_ema():
    """k < N: the mean of the k batches so far (never a partial sum); k = N: exactly
    openai/baselines' accumulation (zeros, then + S_k/N for N batches, kfac.py:444-490); after:
    the EMA from there."""
    s = stats(6)
    n = 4
    avg = RunningAverage(0.99, InitRule("zeros-average", steps=n), torch.float64)
    for k in range(1, n + 1):
        avg.update(s[k - 1])
        mean_so_far = sum(s[i] for i in range(k)) / k  # explicit mean of the first k
        torch.testing.assert_close(avg.value, mean_so_far)
    baselines = torch.zeros_like(s[0])
    for x in s[:n]:  # baselines' loop: zeros plus S/N
        baselines = baselines + x / n
    torch.testing.assert_close(avg.value, baselines)
    avg.update(s[4])
    avg.update(s[5])
    torch.testing.assert_close(avg.value, 0.99 * (0.99 * baselines + 0.01 * s[4]) + 0.01 * s[5])


# --------------------------------------------------------------------------------------------
# capture discipline, errors, scheduling, state


def small_setup(cfg=F64, name="paper"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    return net, KFAC(net, variants.get(name), cfg, lr=0.1)


def fisher_step(net, kfac, x):
    with kfac.fisher_pass() as fisher:
        out = net(x)
        fisher.backward(torch.log_softmax(out, -1)[:, 0].mean())
    kfac.zero_grad()
    out.pow(2).mean().backward()
    return kfac.step()


def test_ordinary_backward_does_not_touch_statistics():
    net, kfac = small_setup()
    net(torch.randn(4, 3)).sum().backward()
    assert all(layer.A.value is None for layer in kfac.layers.values())
    assert not kfac.capture.inputs
    fisher_step(net, kfac, torch.randn(4, 3))
    snapshot = {n: (s.A.value.clone(), s.G.value.clone()) for n, s in kfac.layers.items()}
    for _ in range(3):
        net.zero_grad()
        net(torch.randn(8, 3)).pow(2).sum().backward()
    assert not kfac.capture.inputs and not kfac.capture.outputs
    for n, layer in kfac.layers.items():
        assert torch.equal(layer.A.value, snapshot[n][0]) and torch.equal(
            layer.G.value, snapshot[n][1]
        )
        assert layer.A.count == 1


def test_fisher_pass_leaves_parameter_grads_alone():
    net, kfac = small_setup()
    with kfac.fisher_pass() as fisher:
        out = net(torch.randn(4, 3))
        fisher.backward(out.sum())
    assert all(p.grad is None for p in net.parameters())


def test_unsupported_layers_are_reported():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"1\.weight, 1\.bias"):
        KFAC(net, variants.get("paper"), F64, lr=0.1)
    kfac = KFAC(net, variants.get("paper"), dataclasses.replace(F64, unsupported="sgd"), lr=0.1)
    before = net[1].weight.clone()
    fisher_step(net, kfac, torch.randn(5, 3))
    assert not torch.equal(before, net[1].weight)
    with pytest.raises(UnsupportedLayerError, match="grouped"):
        KFAC(nn.Conv2d(4, 4, 3, groups=2), variants.get("paper"), F64, lr=0.1)


def test_non_finite_factors_raise():
    net, kfac = small_setup()
    with pytest.raises(KfacError, match="non-finite A factor in layer '0'"):
        fisher_step(net, kfac, torch.tensor([[float("nan"), 0.0, 1.0]]))


def test_step_without_statistics_raises():
    net, kfac = small_setup()
    net(torch.randn(2, 3)).sum().backward()
    with pytest.raises(KfacError, match="before any Fisher pass"):
        kfac.step()


def test_inverse_and_stats_schedule():
    cfg = dataclasses.replace(F64, inverse_every=3, stats_every=2)
    net, kfac = small_setup(cfg)
    inverted = []
    for _ in range(7):
        inverted.append(fisher_step(net, kfac, torch.randn(4, 3)).inverted)
    assert inverted == [True, False, False, True, False, False, True]
    assert kfac.stats_updates == 4  # updates 0, 2, 4, 6


def test_cold_start_is_clipped_momentum_sgd():
    cfg = dataclasses.replace(F64, cold_iters=2, cold_momentum=0.9)
    net, kfac = small_setup(cfg)
    kfac.cold_clip = 1e-3
    before = [p.clone() for p in net.parameters()]
    x = torch.randn(4, 3)
    net.zero_grad()
    net(x).pow(2).mean().backward()
    raw_norm = torch.sqrt(sum((p.grad**2).sum() for p in net.parameters())).item()
    info = fisher_step(net, kfac, x)
    assert info.cold
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(net.parameters(), before)))
    # lr · clipped norm; clip_grad_norm_ scales by max_norm / (norm + 1e-6)
    assert moved.item() == pytest.approx(0.1 * raw_norm * 1e-3 / (raw_norm + 1e-6), rel=1e-9)
    assert fisher_step(net, kfac, torch.randn(4, 3)).cold
    assert not fisher_step(net, kfac, torch.randn(4, 3)).cold
    assert kfac.stats_updates == 3  # statistics accumulate during the cold start


def test_state_dict_round_trip_continues_identically():
    net_a, kfac_a = small_setup()
    data = [torch.randn(4, 3) for _ in range(5)]
    for x in data[:3]:
        fisher_step(net_a, kfac_a, x)
    state_net, state_opt = net_a.state_dict(), kfac_a.state_dict()
    net_b, kfac_b = small_setup()
    net_b.load_state_dict(state_net)
    kfac_b.load_state_dict(state_opt)
    for x in data[3:]:
        fisher_step(net_a, kfac_a, x)
        fisher_step(net_b, kfac_b, x)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)


def test_float32_factors_by_default():
    torch.manual_seed(0)
    net = nn.Linear(3, 2).float()
    kfac = KFAC(net, variants.get("paper"), KfacConfig(), lr=0.1)
    with kfac.fisher_pass() as fisher:
        out = net(torch.randn(4, 3, dtype=torch.float32))
        fisher.backward(out.sum())
    assert kfac.layers["Linear"].A.value.dtype == torch.float32


def test_float32_eigh_failure_retries_in_float64_with_a_warning(monkeypatch):
    from kfac_bench.curvature import inverse

    real_eigh = torch.linalg.eigh

    def failing_in_float32(matrix, *args, **kwargs):
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", failing_in_float32)
    a = torch.randn(6, 6, dtype=torch.float32)
    a = a @ a.T
    with pytest.warns(RuntimeWarning, match="retried in float64"):
        vals, vecs = inverse._eigh(a, "A of fc")
    assert vals.dtype == torch.float32
    torch.testing.assert_close(vecs @ torch.diag(vals) @ vecs.T, a, rtol=1e-4, atol=1e-4)

    def always_failing(matrix, *args, **kwargs):
        raise torch.linalg.LinAlgError("no convergence")

    monkeypatch.setattr(torch.linalg, "eigh", always_failing)
    with pytest.warns(RuntimeWarning), pytest.raises(inverse.FactorInverseError, match="A of fc"):
        inverse._eigh(a, "A of fc")


# --------------------------------------------------------------------------------------------
# the symmetric Gram kernel every statistic goes through


@pytest.mark.parametrize("cols", [5, 255, 256, 301, 700])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_equals_the_sum_of_outer_products(cols, dtype):
    """factors.gram (blocked symmetric product from 256 columns on) against Σ_n x_n x_nᵀ summed
    example by example in float64, on a strided (non-contiguous) view of the rows."""
    from kfac_bench.curvature.factors import SYMMETRIC_BLOCK, gram

    assert 2 * SYMMETRIC_BLOCK == 256  # the cases straddle the switch and reach depth 2 (700)
    gen = torch.Generator().manual_seed(cols)
    full = torch.randn(150, cols + 3, generator=gen, dtype=torch.float64)
    rows = full[:, 2 : 2 + cols].to(dtype)  # a column slice: strided rows
    want = torch.zeros(cols, cols, dtype=torch.float64)
    for x in rows.double():
        want += torch.outer(x, x)
    got = gram(rows, 0.37)
    assert got.dtype == dtype and got.shape == (cols, cols)
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-10}
    torch.testing.assert_close(got.double(), 0.37 * want, **tol)
    if cols >= 2 * SYMMETRIC_BLOCK:  # the mirrored off-diagonal blocks are exactly symmetric
        half = (cols + 1) // 2
        assert torch.equal(got[:half, half:], got[half:, :half].T)


@pytest.mark.parametrize("shape", [(300, 257), (100, 300)], ids=["tall", "short"])
@pytest.mark.parametrize("layout", ["row-major", "column-major", "column-slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blas_syrk_equals_the_sum_of_outer_products(shape, layout, dtype):
    """curvature/syrk.py (MKL syrk + mirror) against Σ_n x_n x_nᵀ in float64, on the three layouts
    the statistics hand it: row-major rows, a transposed column-major buffer (conv2/conv3 patch
    rows) and a column slice of a wider buffer (patch rows without the homogeneous column); tall
    (conv patch rows) and short (fc layers: fewer rows than columns, three mirror panels)."""
    from kfac_bench.curvature import syrk

    if not syrk.available(dtype):
        pytest.skip("this torch build exports no MKL syrk (factors.gram uses its blocked product)")
    gen = torch.Generator().manual_seed(3)
    n, k = shape
    if layout == "row-major":
        rows = torch.randn(n, k, generator=gen, dtype=torch.float64).to(dtype)
    elif layout == "column-major":
        rows = torch.randn(k, n, generator=gen, dtype=torch.float64).to(dtype).T
    else:
        rows = torch.randn(n, k + 1, generator=gen, dtype=torch.float64).to(dtype)[:, :k]
    want = torch.zeros(k, k, dtype=torch.float64)
    for x in rows.double():
        want += torch.outer(x, x)
    assert syrk.worthwhile(rows) == syrk.preferred()  # the statistics call it on Intel CPUs
    got = syrk.symmetric_product(rows, 0.37)
    assert got is not None and got.dtype == dtype and got.shape == (k, k)
    assert torch.equal(got, got.T)  # mirrored, not recomputed
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-10}
    torch.testing.assert_close(got.double(), 0.37 * want, **tol)


def test_blas_syrk_declines_what_it_cannot_read_in_place():
    """Rows that are neither row- nor column-major (a strided view both ways) come back None, and
    gram then still computes them; narrow products (K < MIN_COLUMNS) are left to the GEMM."""
    from kfac_bench.curvature import syrk
    from kfac_bench.curvature.factors import gram

    base = torch.randn(40, 30, dtype=torch.float64)
    odd = base[::2, ::3]  # strides (60, 3)
    assert syrk.symmetric_product(odd, 1.0) is None
    torch.testing.assert_close(gram(odd, 1.0), odd.T @ odd)
    assert not syrk.worthwhile(torch.randn(1000, syrk.MIN_COLUMNS - 1))


def test_gram_kernel_names_the_product_gram_uses(monkeypatch):
    """Narrow products are one GEMM, wide ones BLAS syrk where it is there and the blocked product
    where it is not; each computes scale · XᵀX (the kernel column of the bench report)."""
    from kfac_bench.curvature import factors, syrk

    gen = torch.Generator().manual_seed(4)
    narrow = torch.randn(50, 40, generator=gen, dtype=torch.float64)
    wide = torch.randn(50, 300, generator=gen, dtype=torch.float64)
    assert factors.gram_kernel(narrow) == "gemm"
    blas = syrk.available(torch.float64) and syrk.preferred()
    assert factors.gram_kernel(wide) == ("mkl-syrk" if blas else "blocked")
    monkeypatch.setattr(syrk, "worthwhile", lambda rows: False)
    assert factors.gram_kernel(wide) == "blocked"
    for rows in (narrow, wide):
        torch.testing.assert_close(factors.gram(rows, 0.5), 0.5 * rows.T @ rows)


@pytest.mark.parametrize(
    ("vendor", "blas"), [("GenuineIntel", True), ("AuthenticAMD", False), ("", False)]
)
def test_blas_syrk_is_taken_on_intel_cpus_only(vendor, blas, monkeypatch):
    """MKL's syrk for a wide product on an Intel CPU; on any other (AMD, unknown) the blocked
    product of GEMMs, which was the faster one there (curvature/syrk.py)."""
    from kfac_bench.curvature import factors, syrk

    if not syrk.available(torch.float64):
        pytest.skip("this torch build exports no MKL syrk (factors.gram uses its blocked product)")
    monkeypatch.setattr(syrk, "cpu_vendor", lambda: vendor)
    syrk.preferred.cache_clear()
    try:
        wide = torch.randn(50, 300, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        assert syrk.worthwhile(wide) is blas
        assert factors.gram_kernel(wide) == ("mkl-syrk" if blas else "blocked")
        torch.testing.assert_close(factors.gram(wide, 0.5), 0.5 * wide.T @ wide)
    finally:
        monkeypatch.undo()
        syrk.preferred.cache_clear()


@pytest.mark.parametrize(("choice", "blas"), [("mkl", True), ("blocked", False)])
def test_the_syrk_kernel_can_be_forced_by_environment(choice, blas, monkeypatch):
    """KFAC_BENCH_SYRK=mkl|blocked overrides the vendor rule either way; any other value is one
    error naming the choices."""
    from kfac_bench.curvature import syrk

    monkeypatch.setattr(syrk, "cpu_vendor", lambda: "AuthenticAMD" if blas else "GenuineIntel")
    monkeypatch.setenv(syrk.KERNEL_ENV, choice)
    syrk.preferred.cache_clear()
    try:
        assert syrk.preferred() is blas
        monkeypatch.setenv(syrk.KERNEL_ENV, "fast")
        syrk.preferred.cache_clear()
        with pytest.raises(ValueError, match="choose one of auto, mkl, blocked"):
            syrk.preferred()
    finally:
        monkeypatch.undo()
        syrk.preferred.cache_clear()


def test_a_bad_syrk_kernel_choice_is_one_error_line_before_any_work(monkeypatch, capsys):
    """kfac-bench refuses KFAC_BENCH_SYRK=fast with exit 2 and one line naming the choices."""
    from kfac_bench import cli
    from kfac_bench.curvature import syrk

    monkeypatch.setenv(syrk.KERNEL_ENV, "fast")
    syrk.preferred.cache_clear()
    try:
        assert cli.main(["variants"]) == 2
    finally:
        monkeypatch.undo()
        syrk.preferred.cache_clear()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [
        "kfac-bench: error: KFAC_BENCH_SYRK='fast' is not a kernel; choose one of auto, mkl, "
        "blocked"
    ]


def test_cpu_vendor_reads_proc_cpuinfo():
    """The vendor the rule reads is the vendor_id line of /proc/cpuinfo, where there is one."""
    from pathlib import Path

    from kfac_bench.curvature import syrk

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    vendors = [line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")]
    assert syrk.cpu_vendor() == (vendors[0] if vendors else "")


@pytest.mark.parametrize("transpose", ["omatcopy", "strided copy"])
@pytest.mark.parametrize("k, panel", [(1, 4), (7, 4), (8, 4), (130, 128), (37, 5)])
def test_mirror_lower_copies_the_lower_triangle_onto_the_upper(transpose, k, panel, monkeypatch):
    """mirror_lower against an element loop: every upper entry (i < j) becomes the lower entry
    (j, i); the lower triangle and the diagonal are untouched; panels that do and do not divide K,
    with MKL's transpose and with the strided copy used where that is missing."""
    from kfac_bench.curvature import syrk

    if transpose == "strided copy":
        monkeypatch.setattr(syrk, "_transpose_routine", lambda dtype: None)
    elif syrk._transpose_routine(torch.float32) is None:
        pytest.skip("this torch build exports no MKL_Somatcopy")
    square = torch.randn(k, k, generator=torch.Generator().manual_seed(k))
    want = square.clone()
    for i in range(k):
        for j in range(i + 1, k):
            want[i, j] = square[j, i]
    got = syrk.mirror_lower(square.clone(), panel=panel)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="contiguous square"):
        syrk.mirror_lower(torch.zeros(k + 1, k + 1).T[:k, :k] if k > 1 else torch.zeros(2, 3))


@pytest.mark.parametrize("name", variants.names())
def test_kfac_steps_with_the_symmetric_kernel_match_the_single_gemm_kernel(name, monkeypatch):
    """The reference presets compute what they did before the symmetric kernels: three float32
    K-FAC steps with the A of a layer wide enough for the symmetric kernels (K = 401 > 256 with
    N = 64 rows: BLAS syrk where available, else the blocked product), and again with the blocked
    product alone, equal, to float tolerance, the same steps with every statistic as the single
    GEMM the factors were computed with before."""
    from kfac_bench.curvature import factors

    def run() -> list[torch.Tensor]:
        torch.manual_seed(5)
        net = nn.Sequential(nn.Conv2d(4, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 300))
        net.append(nn.Tanh()).append(nn.Linear(300, 6))
        net = net.float()
        kfac = KFAC(net, variants.get(name), KfacConfig(dtype="float32"), lr=0.05)
        gen = torch.Generator().manual_seed(9)
        for _ in range(3):
            x = torch.randn(64, 4, 7, 7, generator=gen, dtype=torch.float32)
            a = torch.randint(0, 6, (64,), generator=gen)
            with kfac.fisher_pass() as fisher:
                logits = net(x)
                fisher.backward(torch.distributions.Categorical(logits=logits).log_prob(a).mean())
            kfac.zero_grad()
            torch.nn.functional.cross_entropy(logits, a).backward()
            kfac.step()
        return [p.detach().clone() for p in net.parameters()]

    calls = []
    recurse = factors._symmetric_blocks
    monkeypatch.setattr(
        factors, "_symmetric_blocks", lambda *args: calls.append(args[3:]) or recurse(*args)
    )
    blas_calls = []
    product = factors.syrk.symmetric_product
    monkeypatch.setattr(
        factors.syrk,
        "symmetric_product",
        lambda rows, scale: blas_calls.append(rows.shape) or product(rows, scale),
    )
    symmetric = run()
    if factors.syrk.available(torch.float32) and factors.syrk.preferred():
        assert any(k in (400, 401) for _, k in blas_calls)  # BLAS syrk: the Linear(400, ·) A
    else:
        assert any(lo == 0 and hi >= 400 for lo, hi in calls)
    monkeypatch.setattr(factors.syrk, "worthwhile", lambda rows: False)  # no BLAS syrk
    calls.clear()
    blocked = run()
    assert any(lo == 0 and hi >= 400 for lo, hi in calls)  # blocked: the Linear(400, ·) A
    monkeypatch.setattr(factors, "SYMMETRIC_BLOCK", 10**9)  # every product one GEMM again
    calls.clear()
    single = run()
    assert not calls
    for kernel in (symmetric, blocked):
        for got, want in zip(kernel, single):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
