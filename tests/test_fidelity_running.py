"""Running-factor mode (issue 11): the factors the trainer would hold after K Fisher batches, folded
by the trainer's own KFAC, against running averages computed by hand from the per-batch factors;
K = 1 equals the single-batch factors exactly where the start rule says m_1 = S_1."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fidelity_support import one_thread  # noqa: F401  (fixture)

import variants
from kfac_bench.config import KfacConfig, PolicyConfig
from kfac_bench.fidelity import Settings, measure
from kfac_bench.fidelity.approx import capture_layer_batches, variant_blocks
from kfac_bench.fidelity.exact import FisherProblem
from kfac_bench.fidelity.layout import build_slots
from kfac_bench.fidelity.running import running_blocks, running_factor_set
from kfac_bench.rl.policies import build_policy

DECAY = 0.9


def batches(count: int, batch: int = 7, seed: int = 0) -> list[FisherProblem]:
    """``count`` Fisher batches of one policy (different states, actions and noise)."""
    torch.manual_seed(seed)
    policy = build_policy((2, 6, 6), 3, PolicyConfig(arch="minatar-cnn")).double()
    slots = build_slots(policy)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        obs = (torch.rand(batch, 2, 6, 6, generator=gen) < 0.3).double()
        with torch.no_grad():
            probs = torch.softmax(policy(obs)[0], -1)
        actions = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        noise = torch.randn(batch, generator=gen, dtype=torch.float64)
        out.append(FisherProblem(policy, slots, obs, actions, noise, 1.0, True))
    return out


def per_batch(name: str, problems: list[FisherProblem]):
    """[[Factors of layer l in batch k]_l]_k, one batch at a time (no averaging)."""
    strategy = variants.get(name)
    return [
        [b.factors for b in variant_blocks(strategy, p.slots, capture_layer_batches(p))]
        for p in problems
    ]


def by_hand(stats: list[torch.Tensor], kind: str, steps: int) -> torch.Tensor:
    """The running average of S_1 … S_K written out (DESIGN.md §3, kfac.running_init):
    first: m_1 = S_1; identity: m_0 = I; zeros-average: the plain mean up to ``steps``; then
    m_k = d·m_{k−1} + (1 − d)·S_k."""
    if kind == "identity":
        m = torch.eye(stats[0].shape[0], dtype=stats[0].dtype)
        rest = stats
    elif kind == "zeros-average":
        head = stats[:steps]
        m = sum(head) / len(head)
        rest = stats[steps:]
    else:
        m, rest = stats[0], stats[1:]
    for s in rest:
        m = DECAY * m + (1 - DECAY) * s
    return m


@pytest.mark.parametrize(
    ("name", "init", "kind"),
    [
        ("paper", "variant", "first"),  # paper's own start
        ("kfac-pytorch", "variant", "identity"),  # KFAC-Pytorch's own start
        ("baselines", "zeros-average", "zeros-average"),  # mean of 2, then EMA
        ("ikostrikov", "identity", "identity"),  # a split-bias variant, start overridden
    ],
)
def test_running_factors_are_the_hand_running_average(name, init, kind):
    problems = batches(4)
    config = KfacConfig(stats_decay=DECAY, running_init=init, init_average_steps=2)
    blocks, rule = running_blocks(variants.get(name), problems, config)
    assert rule.kind == kind
    stats = per_batch(name, problems)
    departures = []
    for layer, block in enumerate(blocks):
        for part in ("A", "G", "bias_G"):
            sequence = [getattr(s[layer], part) for s in stats]
            if sequence[0] is None:
                assert getattr(block.factors, part) is None
                continue
            want = by_hand(sequence, kind, 2)
            torch.testing.assert_close(getattr(block.factors, part), want, rtol=1e-12, atol=1e-14)
            departures.append(float((want - sequence[-1]).norm() / want.norm()))
    assert max(departures) > 0.05  # the average is far from the latest batch alone


def _network_cosines(rows, reference="sampled-fisher"):
    return {
        (r["factors"], r["variant"], r["damping_mode"]): r["cosine"]
        for r in rows
        if r["layer"] == "network" and r["reference"] == reference and r.get("factors")
    }


def test_one_update_equals_the_batch_factors_where_the_start_rule_says_so():
    """m_1 = S_1 for ``first`` (paper) and ``zeros-average`` (baselines), but d·I + (1 − d)·S_1
    for ``identity`` (kfac-pytorch): the rows against the same references say exactly that."""
    problems = batches(1, batch=9, seed=1)
    problem = problems[0]
    g = torch.randn(problem.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = ("paper", "baselines", "kfac-pytorch")
    config = KfacConfig(dtype="float64", stats_decay=DECAY)
    running = running_factor_set(names, problems, config)
    assert running.label == "running-1"
    assert running.rules == {
        "paper": "first",
        "baselines": "zeros-average(10)",
        "kfac-pytorch": "identity",
    }
    settings = Settings(variants=names, damping_modes=("eigen", "tikhonov"), reference=False)
    rows = measure(problem, g, config, settings, extra_factors=(running,))
    for reference in ("true-fisher", "sampled-fisher"):
        cos = _network_cosines(rows, reference)
        for mode in ("eigen", "tikhonov"):
            for same in ("paper", "baselines"):
                assert cos["running-1", same, mode] == pytest.approx(
                    cos["batch", same, mode], abs=1e-12
                )
            assert (
                abs(cos["running-1", "kfac-pytorch", mode] - cos["batch", "kfac-pytorch", mode])
                > 1e-4
            )
    running_rows = [r for r in rows if r["factors"] == "running-1"]
    assert {r["stats_decay"] for r in running_rows} == {DECAY}
    assert all("running_init" not in r for r in rows if r["factors"] == "batch")


def test_more_updates_differ_from_the_batch_and_match_the_hand_factors():
    """K = 3 (paper, start ``first``): the rows' directions are those of the hand-averaged factors."""
    problems = batches(3, batch=9, seed=2)
    problem = problems[-1]
    g = torch.randn(problem.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    config = KfacConfig(dtype="float64", stats_decay=DECAY)
    running = running_factor_set(("paper",), problems, config)
    settings = Settings(
        variants=("paper",),
        damping_modes=("eigen",),
        reference=False,
        references=("sampled-fisher",),
    )
    rows = measure(problem, g, config, settings, extra_factors=(running,))
    cos = _network_cosines(rows)
    assert abs(cos["running-3", "paper", "eigen"] - cos["batch", "paper", "eigen"]) > 1e-4

    # the same comparison with factors averaged by hand, through the same preconditioner
    stats = per_batch("paper", problems)
    hand = []
    for layer, block in enumerate(running.blocks["paper"]):
        a = by_hand([s[layer].A for s in stats], "first", 0)
        gg = by_hand([s[layer].G for s in stats], "first", 0)
        hand.append(
            dataclasses.replace(block, factors=dataclasses.replace(block.factors, A=a, G=gg))
        )
    hand_set = dataclasses.replace(running, label="hand-3", blocks={"paper": hand})
    again = measure(problem, g, config, settings, extra_factors=(hand_set,))
    assert _network_cosines(again)["hand-3", "paper", "eigen"] == pytest.approx(
        cos["running-3", "paper", "eigen"], abs=1e-12
    )


def test_stale_running_factors_are_the_hand_average_of_the_older_batches_only():
    """``running-K-stale-s``: the decomposition an inverse every n > s holds s updates after it
    was taken is the running average of S_1 … S_{K−s}, by hand; measured on batch K (its rows'
    references are those of the fresh running-K rows)."""
    problems = batches(5, seed=3)
    config = KfacConfig(stats_decay=DECAY, running_init="first", dtype="float64")
    stats = per_batch("paper", problems)
    stale = running_factor_set(("paper",), problems, config, staleness=2)
    assert stale.label == "running-5-stale-2"
    fresh = running_factor_set(("paper",), problems, config)
    for layer, (old, new) in enumerate(zip(stale.blocks["paper"], fresh.blocks["paper"])):
        want = by_hand([s[layer].A for s in stats[:3]], "first", 0)
        torch.testing.assert_close(old.factors.A, want, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(old.factors.A, new.factors.A)  # batches 4 and 5 are left out
    with pytest.raises(ValueError, match="needs more than 5 batches"):
        running_factor_set(("paper",), problems, config, staleness=5)
    settings = Settings(variants=("paper",), damping_modes=("eigen",), dampings=(0.01,))
    g = torch.randn(
        problems[-1].dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    rows = measure(problems[-1], g, config, settings, extra_factors=(fresh, stale))
    cos = _network_cosines(rows)
    assert (
        abs(cos["running-5-stale-2", "paper", "eigen"] - cos["running-5", "paper", "eigen"]) > 1e-4
    )
