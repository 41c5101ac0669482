"""kfac.backward: the training gradient from the statistics' patch rows (curvature/weight_grad.py)
against autograd's own ``loss.backward()`` on the same forward, and the cases that fall back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature import KFAC, weight_grad


class Net(nn.Module):
    """Every geometry the patch rows cover: a strided, padded, dilated conv with bias, a conv
    without bias, a Linear on (B, T, K) input (positions), a Linear without bias; plus a free
    parameter outside any layer (as a Gaussian policy's log σ) and one the loss never reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=2)
        self.conv2 = nn.Conv2d(6, 5, 2, bias=False)
        self.seq = nn.Linear(5, 7)  # applied to (B, 9, 5): 9 positions
        self.head = nn.Linear(63, 4, bias=False)
        self.offset = nn.Parameter(torch.full((4,), 0.3))
        self.unused = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv2(torch.relu(self.conv1(x))))  # (B, 5, 3, 3)
        h = torch.tanh(self.seq(h.flatten(2).transpose(1, 2)))  # (B, 9, 7)
        return self.head(h.flatten(1)) + self.offset


def batch(seed: int, n: int = 12):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 9, 9, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def fisher_then_backward(kfac: KFAC, net: Net, x, a, reuse: bool) -> None:
    with kfac.fisher_pass() as fisher:
        logits = net(x)
        gen = torch.Generator().manual_seed(int(a.sum()))  # the same sample for both twins
        sampled = torch.multinomial(logits.detach().softmax(-1), 1, generator=gen).squeeze(1)
        fisher.backward(torch.distributions.Categorical(logits=logits).log_prob(sampled).mean())
    loss = nn.functional.cross_entropy(logits, a) + 0.1 * logits.pow(2).mean()
    if reuse:
        kfac.backward(loss)
    else:
        loss.backward()


def make(name: str = "paper", **config) -> tuple[Net, KFAC]:
    torch.manual_seed(0)
    net = Net()
    config = KfacConfig(unsupported="sgd", **config)
    return net, KFAC(net, variants.get(name), config, lr=0.05)


@pytest.mark.parametrize("name", variants.names())
def test_the_reused_gradient_is_autograds(name, monkeypatch):
    """Every parameter's .grad after kfac.backward equals loss.backward()'s on the same forward
    (a twin network), the layer weights through the patch path (its GEMMs counted), the free
    parameter through autograd, the unreachable one left None; gradients already present are
    accumulated into."""
    calls = []
    rows = weight_grad.gradient_rows
    monkeypatch.setattr(weight_grad, "gradient_rows", lambda m, g: calls.append(m) or rows(m, g))
    x, a = batch(1)
    net, kfac = make(name)
    twin, twin_kfac = make(name)
    for p in (net.conv1.weight, twin.conv1.weight):
        p.grad = torch.full_like(p, 0.5)
    fisher_then_backward(kfac, net, x, a, reuse=True)
    fisher_then_backward(twin_kfac, twin, x, a, reuse=False)
    assert len(calls) == 4  # every layer's weight gradient came from its patch rows
    assert net.unused.grad is None and twin.unused.grad is None
    for (n, p), q in zip(net.named_parameters(), twin.parameters()):
        if q.grad is None:
            continue
        assert p.grad is not None and p.grad.shape == p.shape, n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_gradient_rows_are_the_output_gradient_per_position():
    """gradient_rows against an explicit loop: row (n·T + t) of a conv is grad_output[n, :, i, j]
    with t = i·Ow + j."""
    conv = nn.Conv2d(2, 3, 2)
    g = torch.randn(4, 3, 2, 5)
    rows = weight_grad.gradient_rows(conv, g)
    for n in range(4):
        for i in range(2):
            for j in range(5):
                assert torch.equal(rows[n * 10 + i * 5 + j], g[n, :, i, j])


@pytest.mark.parametrize(
    "config",
    [
        {"pipelined_stats": True},  # the statistics run later, on a thread
        {"stats_batch_fraction": 0.5},  # the statistic's rows are half the batch
        {"stats_every": 2},  # no Fisher pass on the second update
    ],
    ids=["pipelined", "fraction", "stats-not-due"],
)
def test_without_whole_batch_rows_it_is_loss_backward(config, monkeypatch):
    """Where this update has no rows of the whole batch, kfac.backward is loss.backward(): the
    patch path is taken only on updates with a synchronous whole-batch Fisher pass, and three
    K-FAC steps match the plain-backward twin exactly when it is never taken."""
    import kfac_bench.curvature.optimizer as optimizer

    taken = []
    reuse_rows = optimizer.backward_reusing_patches
    monkeypatch.setattr(
        optimizer, "backward_reusing_patches", lambda *args: taken.append(1) or reuse_rows(*args)
    )
    net, kfac = make(**config)
    twin, twin_kfac = make(**config)
    for seed in range(3):
        x, a = batch(seed)
        for model, k, reuse in ((net, kfac, True), (twin, twin_kfac, False)):
            k.zero_grad(set_to_none=True)
            fisher_then_backward(k, model, x, a, reuse)
            k.step()
    if "pipelined_stats" in config:
        assert len(taken) == 1  # only the first update's statistics are synchronous
    elif "stats_every" in config:
        assert len(taken) == 2  # updates 1 and 3 have a Fisher pass
    else:
        assert not taken
        for p, q in zip(net.parameters(), twin.parameters()):
            assert torch.equal(p, q)


@pytest.mark.parametrize("name", variants.names())
def test_kfac_steps_with_reused_rows_match_plain_backward(name):
    """The reference presets compute what they did before: five K-FAC steps (the trust region,
    momentum and inverses included) with the gradients from the reused rows equal, to float
    tolerance, the same steps with autograd's ``loss.backward()``."""
    nets = []
    for reuse in (True, False):
        net, kfac = make(name, inverse_every=2)
        for seed in range(5):
            x, a = batch(seed)
            kfac.zero_grad(set_to_none=True)
            fisher_then_backward(kfac, net, x, a, reuse)
            kfac.step()
        nets.append(net)
    for (n, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
