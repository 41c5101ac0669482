"""``kfac.pipelined_stats`` (curvature/pipeline.py): the statistics of batch k computed on a
background thread and folded at step k + 1, against the synchronous schedule."""

from __future__ import annotations

import csv
import dataclasses
import re

import pytest
import torch
from torch import nn

import variants
from kfac_bench.config import ConfigError, KfacConfig
from kfac_bench.curvature import KFAC, KfacError
from kfac_bench.presets import build_config
from kfac_bench.rl.trainer import train

F64 = KfacConfig(dtype="float64", momentum=0.0, cold_iters=0)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)).double()


def batches(count: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(12, 2, 6, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (12,), generator=gen),
        )
        for _ in range(count)
    ]


def update(kfac: KFAC, model: nn.Module, x: torch.Tensor, a: torch.Tensor, fisher_scale=1.0):
    """One trainer-shaped update: Fisher pass on (x, a), training-loss gradient, step."""
    with kfac.fisher_pass() as fisher:
        logits = model(x)
        log_prob = torch.distributions.Categorical(logits=logits).log_prob(a).mean()
        fisher.backward(fisher_scale * log_prob)
    kfac.zero_grad()
    torch.nn.functional.cross_entropy(logits, a).backward()
    return kfac.step()


def factors(kfac: KFAC) -> list[torch.Tensor]:
    return [m.value.clone() for layer in kfac.layers.values() for m in (layer.A, layer.G)]


def test_each_step_uses_the_factors_one_batch_older():
    """Parameters held fixed (lr 0), so every batch's statistic is schedule-independent: the
    pipelined factors at step k are the synchronous ones of step k − 1 (k ≥ 2), the first step
    folds its own batch, and a state_dict gives the factors with every batch folded."""
    data = batches(5)
    runs = {}
    for pipelined in (False, True):
        model = net()
        config = dataclasses.replace(F64, pipelined_stats=pipelined, trust_region="none")
        kfac = KFAC(model, variants.get("paper"), config, lr=0.0)
        seen, lags = [], []
        for x, a in data:
            lags.append(update(kfac, model, x, a).stats_staleness)
            seen.append(factors(kfac))
        kfac.state_dict()
        runs[pipelined] = (seen, lags, kfac)
        kfac.close()
    sync, lags_sync, _ = runs[False]
    piped, lags_piped, kfac_piped = runs[True]
    assert lags_sync == [0] * 5 and lags_piped == [0, 1, 1, 1, 1]
    for got, want in zip(piped[0], sync[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for k in range(1, 5):
        for got, want in zip(piped[k], sync[k - 1]):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        assert any(not torch.allclose(g, w) for g, w in zip(piped[k], sync[k]))
    for got, want in zip(factors(kfac_piped), sync[-1]):  # state_dict folded the last batch
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def trajectory(checkpoint_at: int | None) -> list[torch.Tensor]:
    model = net()
    kfac = KFAC(model, variants.get("paper"), dataclasses.replace(F64, pipelined_stats=True), 0.05)
    for k, (x, a) in enumerate(batches(6, seed=4)):
        update(kfac, model, x, a)
        if k == checkpoint_at:
            kfac.state_dict()  # joins the statistics in flight
    kfac.close()
    return [p.detach().clone() for p in model.parameters()]


def test_pipelined_steps_are_reproducible_and_a_checkpoint_does_not_change_them():
    plain, again, checkpointed = trajectory(None), trajectory(None), trajectory(2)
    for p, q, r in zip(plain, again, checkpointed):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_a_non_finite_statistic_on_the_thread_surfaces_at_the_next_step():
    """A NaN Fisher loss (the training gradient stays finite) gives NaN statistics: computed on
    the thread after step 2, they raise at step 3, where they are folded; nothing is lost."""
    model = net()
    kfac = KFAC(model, variants.get("paper"), dataclasses.replace(F64, pipelined_stats=True), 0.05)
    (x, a), (x2, a2), (x3, a3) = batches(3, seed=7)
    update(kfac, model, x, a)
    assert update(kfac, model, x2, a2, fisher_scale=float("nan")).stats_staleness == 1
    with pytest.raises(KfacError, match="non-finite G factor"):
        update(kfac, model, x3, a3)
    kfac.close()


def test_ekfac_and_the_critic_refuse_pipelining_in_one_line():
    with pytest.raises(ConfigError, match=re.escape("kfac.pipelined_stats=true does not support")):
        build_config(
            "CartPole-v1", overrides={"kfac.pipelined_stats": True, "kfac.damping_mode": "ekfac"}
        )
    with pytest.raises(
        ConfigError, match=re.escape("critic_kfac.pipelined_stats=true is not supported")
    ):
        build_config("Pendulum-v1", overrides={"critic_kfac.pipelined_stats": True})


def test_a_pipelined_run_logs_its_lag_and_is_deterministic(tmp_path):
    overrides = {"kfac.pipelined_stats": True, "log.update_every": 1}
    outs = []
    for name in ("a", "b"):
        config = build_config("MinAtar/Breakout-v1", total_steps=3200, overrides=overrides)
        train(config, tmp_path / name)
        outs.append(tmp_path / name)
    rows = list(csv.DictReader((outs[0] / "updates.csv").open()))
    assert rows[0]["stats_staleness"] == "0" and {r["stats_staleness"] for r in rows[1:]} == {"1"}
    episodes = [(o / "episodes.csv").read_text().splitlines() for o in outs]
    strip = [[",".join(line.split(",")[i] for i in (0, 2, 3)) for line in e] for e in episodes]
    assert strip[0] == strip[1] and len(strip[0]) > 1
