"""Speed machinery of the curvature core (issue 6). The asynchronous inverse
(``kfac.async_inverse``): exact staleness, reproducibility, the synchronous result once the
statistics stop changing, no hangs (timeouts, errors, close). The reusable row workspace and
``kfac.inverse_threads``: same results, caller's thread count untouched."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from torch import nn

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature import KFAC, KfacError, adapters
from kfac_bench.curvature import inverse as inverse_mod
from kfac_bench.curvature.adapters import Workspace, using_workspace
from kfac_bench.curvature.inverse import FactorInverseError

torch.set_default_dtype(torch.float64)

SYNC = KfacConfig(dtype="float64", inverse_every=4, stats_decay=0.9)
ASYNC = dataclasses.replace(SYNC, async_inverse=True, async_staleness=2, async_timeout_s=60.0)


def make(config: KfacConfig, seed: int = 0) -> tuple[nn.Module, KFAC]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4))
    return net, KFAC(net, variants.get("paper"), config, lr=0.1)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + i)
    return torch.randn(6, 2, 8, 8, generator=gen), torch.randint(0, 4, (6,), generator=gen)


def update(net: nn.Module, kfac: KFAC, i: int, stats: bool = True):
    """One trainer-like update on batch i; the Fisher pass only while ``stats``."""
    x, a = batch(i)
    if stats:
        with kfac.fisher_pass() as fisher:
            logits = net(x)
            fisher.backward(torch.log_softmax(logits, -1).gather(1, a[:, None]).mean())
    else:
        logits = net(x)
    kfac.zero_grad()
    (-(torch.log_softmax(logits, -1).gather(1, a[:, None]).mean())).backward()
    return kfac.step()


def preconditioned(kfac: KFAC, probe: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's decomposition applied to a fixed probe gradient matrix."""
    return {name: kfac.layers[name].weights.apply(m) for name, m in probe.items()}


def test_async_converges_to_sync_once_statistics_stop_changing():
    net_s, sync = make(SYNC)
    net_a, asyn = make(ASYNC)
    gen = torch.Generator().manual_seed(7)
    probe = {"0": torch.randn(3, 19, generator=gen), "3": torch.randn(4, 28, generator=gen)}
    gaps = []
    for i in range(14):
        # the statistics change over updates 0-3, then stop (no more Fisher passes). Until step
        # 4 both optimizers took identical steps, so their final factors are identical.
        update(net_s, sync, i, stats=i < 4)
        update(net_a, asyn, i, stats=i < 4)
        ps, pa = preconditioned(sync, probe), preconditioned(asyn, probe)
        gaps.append(max(((ps[n] - pa[n]).norm() / ps[n].norm()).item() for n in probe))
    # kfac steps 0..13: sync decomposes at 0, 4, 8, 12; async snapshots at 4, 8, 12 and installs
    # them at 6, 10 (staleness 2). The first decomposition is synchronous in both.
    assert max(gaps[:4]) == 0.0
    assert min(gaps[4:6]) > 1e-3  # sync uses the final statistics, async still step 0's
    assert max(gaps[6:]) < 1e-10  # async installed its snapshot of the final statistics
    asyn.close()


def test_staleness_and_install_steps_are_exact():
    _, kfac = make(ASYNC)
    net = kfac.model
    infos = [update(net, kfac, i) for i in range(10)]
    assert [i.staleness for i in infos] == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
    assert [i.inverted for i in infos] == [True] + [False] * 5 + [True] + [False] * 3
    _, sync = make(SYNC)
    sync_infos = [update(sync.model, sync, i) for i in range(6)]
    assert [i.staleness for i in sync_infos] == [0, 1, 2, 3, 0, 1]
    kfac.close()


def test_async_runs_are_reproducible_and_off_starts_no_thread():
    results = []
    for _ in range(2):
        net, kfac = make(ASYNC)
        for i in range(11):
            update(net, kfac, i)
        kfac.close()
        results.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)

    before = {t.name for t in threading.enumerate()}
    net, kfac = make(SYNC)
    for i in range(6):
        update(net, kfac, i)
    assert kfac._job is None
    assert "kfac-inverse" not in {t.name for t in threading.enumerate()} - before


def test_state_dict_with_a_decomposition_in_flight_resumes_identically():
    net_a, kfac_a = make(ASYNC)
    for i in range(5):  # step 4 started a background decomposition (install at step 6)
        update(net_a, kfac_a, i)
    assert kfac_a._job is not None
    state_net = {k: v.clone() for k, v in net_a.state_dict().items()}
    state_opt = kfac_a.state_dict()
    assert "pending_inverse" in state_opt
    net_b, kfac_b = make(ASYNC, seed=1)
    net_b.load_state_dict(state_net)
    kfac_b.load_state_dict(state_opt)
    infos = []
    for i in range(5, 12):
        infos.append(update(net_a, kfac_a, i))
        update(net_b, kfac_b, i)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert infos[1].inverted and infos[1].staleness == 2  # step 6 installed snapshot 4
    kfac_a.close()
    kfac_b.close()


def test_a_slow_decomposition_times_out_instead_of_hanging(monkeypatch):
    release = threading.Event()
    real = inverse_mod.decompose_layer

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(inverse_mod, "decompose_layer", slow)
    cfg = dataclasses.replace(ASYNC, async_timeout_s=0.2)
    net, kfac = make(cfg)
    for i in range(6):  # step 4 starts the (stuck) job; step 6 must install it
        update(net, kfac, i)
    with pytest.raises(KfacError, match=r"did not finish within 0\.2 s"):
        update(net, kfac, 6)
    release.set()
    kfac.close(timeout_s=10)
    assert kfac._job is None


def test_a_failed_decomposition_is_raised_on_the_training_thread(monkeypatch):
    def broken(*args, **kwargs):
        raise FactorInverseError("eigendecomposition of A of '0' failed: test")

    net, kfac = make(ASYNC)
    for i in range(5):
        update(net, kfac, i)
    kfac.close()  # let the real job of step 4 finish, then start a broken one at step 8
    monkeypatch.setattr(inverse_mod, "decompose_layer", broken)
    for i in range(5, 10):  # step 8 starts the broken job, step 10 must install it
        update(net, kfac, i)
    with pytest.raises(KfacError, match="failed: test"):
        update(net, kfac, 10)


def test_staleness_bound_is_checked():
    with pytest.raises(KfacError, match="async_staleness"):
        make(dataclasses.replace(ASYNC, async_staleness=5))
    with pytest.raises(KfacError, match="async_staleness"):
        make(dataclasses.replace(ASYNC, async_staleness=0))


def test_inverse_threads_leaves_the_callers_thread_count_alone():
    before = torch.get_num_threads()
    net, kfac = make(dataclasses.replace(SYNC, inverse_threads=1))
    update(net, kfac, 0)
    assert torch.get_num_threads() == before
    net, kfac = make(dataclasses.replace(ASYNC, inverse_threads=1))
    for i in range(8):
        update(net, kfac, i)
    kfac.close()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("name", variants.names())
def test_workspace_rows_give_the_same_factors(name):
    """Factors built in a reused workspace (as KFAC does) equal freshly allocated ones, also
    when the same buffers are reused by layers of other shapes in between."""
    torch.manual_seed(4)
    layers = [
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Linear(5, 4),
        nn.Conv2d(3, 2, 2, dilation=2, bias=False),
        nn.Linear(6, 3, bias=False),
    ]
    shapes = [(5, 2, 9, 9), (5, 5), (5, 3, 7, 7), (5, 2, 6)]
    strategy = variants.get(name)
    inputs = []
    for layer, shape in zip(layers, shapes):
        x = torch.randn(shape)
        out = layer(x)
        g = torch.autograd.grad((out * torch.randn_like(out)).sum() / shape[0], out)[0]
        inputs.append((layer, x, g))
    fresh = [strategy.factors(*args) for args in inputs]
    workspace = Workspace()
    for _ in range(2):
        with using_workspace(workspace):
            reused = [strategy.factors(*args) for args in inputs]
        for a, b in zip(fresh, reused):
            torch.testing.assert_close(a.A, b.A, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a.G, b.G, rtol=1e-12, atol=1e-12)
            assert (a.bias_G is None) == (b.bias_G is None)


@pytest.mark.parametrize("kernel", [(3, 1), (4, 2), (8, 4)])
def test_row_and_column_major_patch_layouts_match_unfold(kernel):
    """Kernels narrower than ROW_MAJOR_MIN_KW are copied column-major, wider ones row-major;
    both give Ω = (1/B) Σ ā āᵀ of the F.unfold patches (float64, with and without bias)."""
    size, stride = kernel
    assert (size >= adapters.ROW_MAJOR_MIN_KW) == (size == 8)
    torch.manual_seed(5)
    for bias in (True, False):
        conv = nn.Conv2d(2, 3, size, stride=stride, padding=1, bias=bias)
        x = torch.randn(3, 2, 13, 13)
        out = conv(x)
        g = torch.autograd.grad((out * torch.randn_like(out)).sum() / 3, out)[0]
        patches = torch.nn.functional.unfold(x, size, padding=1, stride=stride).transpose(1, 2)
        if bias:
            patches = torch.cat([patches, torch.ones(*patches.shape[:2], 1)], dim=2)
        omega = torch.einsum("bti,btj->ij", patches, patches) / 3
        got = variants.get("paper").factors(conv, x, g)
        torch.testing.assert_close(got.A, omega, rtol=1e-12, atol=1e-12)
        batch = adapters.layer_batch(conv, x, g)
        torch.testing.assert_close(batch.patches, patches[..., : batch.in_features])
