"""Running-factor mode: the factors the trainer would hold after K Fisher batches.

The trainer's own code does the folding: a :class:`~kfac_bench.curvature.optimizer.KFAC` is built
on the measured policy's K-FAC module with the run's ``KfacConfig`` (so ``kfac.running_init`` —
``variant`` meaning the variant's own start rule —, ``kfac.init_average_steps``,
``kfac.stats_decay`` and ``kfac.stats_batch_fraction`` act exactly as in training), and each batch
goes through its ``fisher_pass()`` with the trainer's Fisher loss (``rl/losses.py``
``fisher_loss``: the batch's sampled actions and noise ε). The running averages
(``curvature/running.py`` ``RunningAverage``) it then holds are the factors measured; no step is
taken. Two deliberate differences from a training run: the policy is held fixed over the K batches
(the trainer's changes between updates), and the factors are float64 (as every fidelity factor).

K counts *Fisher batches folded*: with ``kfac.stats_every = s`` the trainer holds these after
(K − 1)·s + 1 updates.

Batches: the K − 1 older ones are consecutive rollouts of one env stream reset with ``seed + 1``
(:class:`~kfac_bench.fidelity.batch.Rollouts`); the latest is the single-batch mode's batch itself
(same observations, actions, noise and gradient), so rows with factors ``batch`` and
``running-K`` are measured against the very same references and differ only in the factors.

``ekfac`` rows (``eigenbasis.py``): the same ``KFAC`` is built with ``damping_mode = "ekfac"`` and
takes one step after each Fisher pass, on zero gradients (the parameters do not move; this is
checked), with ``kfac.inverse_every``, ``kfac.ekfac_scale_every`` and ``kfac.ekfac_scale_decay`` of
the run and no cold start: so s is the trainer's own — reset to d_G d_Aᵀ at each new basis, then
every due pass folded in (``LayerState.fold_scale``) — and the EKFAC block measured is the
decomposition that KFAC holds at its K-th step. Its basis is that of the running factors at the
last decomposition (step k with k ≡ 0 mod ``inverse_every``), which need not be the factors after
all K batches that the Kronecker rows invert; that staleness is part of what the trainer holds.

Stale decompositions (``--inverse-staleness s``, label ``running-K-stale-s``): with
``kfac.inverse_every = n`` the trainer preconditions step K with the decomposition of the running
factors of step K − s, s ∈ [0, n − 1] (s = ``inverse_staleness`` in updates.csv). Those rows fold
only the first K − s batches and are measured against the latest batch's references and gradient,
like every row; the policy is held fixed, so the staleness measured is the factors' alone.

``empirical`` running sets (``fisher_type``) fold each batch's empirical Fisher pass instead
(``losses``: one batch-mean loss per problem, ``batch.empirical_loss``).
"""

from __future__ import annotations

import dataclasses

import torch

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature.factors import Factors, FactorStrategy, InitRule
from kfac_bench.curvature.optimizer import KFAC
from kfac_bench.fidelity.approx import FisherLoss, KfacBlock, sampled_loss
from kfac_bench.fidelity.eigenbasis import EKFAC, EkfacBlock
from kfac_bench.fidelity.exact import FisherProblem
from kfac_bench.fidelity.layout import kfac_root
from kfac_bench.fidelity.rows import FactorSet


def describe_rule(rule: InitRule) -> str:
    """``first`` | ``identity`` | ``zeros-average(N)`` (the ``running_init`` column)."""
    return f"zeros-average({rule.steps})" if rule.kind == "zeros-average" else rule.kind


def running_blocks(
    strategy: FactorStrategy,
    problems: list[FisherProblem],
    config: KfacConfig,
    losses: list[FisherLoss] | None = None,
    ekfac: bool = False,
) -> tuple[list[KfacBlock], InitRule]:
    """The running factors after folding ``problems`` (oldest first) with the trainer's KFAC,
    and the start rule that KFAC resolved for them. With ``ekfac``, each block also carries the
    EKFAC decomposition the trainer holds at its K-th step (module docstring).

    Every problem shares one float64 policy and layer layout (``problems[-1].slots``);
    ``losses`` (default: each problem's Fisher loss) are the passes' batch-mean losses.
    """
    if not problems:
        raise ValueError("running mode needs at least one Fisher batch")
    losses = [sampled_loss(p) for p in problems] if losses is None else losses
    if len(losses) != len(problems):
        raise ValueError("running mode needs one loss per Fisher batch")
    latest = problems[-1]
    policy = latest.policy
    # folding does not depend on how the factors are later damped or inverted; steps (ekfac only)
    # are taken on zero gradients
    settings = dataclasses.replace(
        config,
        dtype="float64",
        async_inverse=False,
        damping_mode=EKFAC if ekfac else "eigen",
        stats_every=1,
        cold_iters=0,
        pipelined_stats=False,
    )
    root = kfac_root(policy)
    params = [p for p in root.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    kfac = KFAC(root, strategy, settings, lr=1.0)
    try:
        for problem, loss in zip(problems, losses):
            with kfac.fisher_pass() as fisher:
                fisher.backward(loss(*policy(problem.obs)))
            if ekfac:
                for p in params:
                    p.grad = torch.zeros_like(p)
                kfac.step()
    finally:
        kfac.capture.remove()
        for p in params:
            p.grad = None
    if any(not torch.equal(p, b) for p, b in zip(params, before)):
        raise RuntimeError("running mode moved the measured policy")
    blocks = []
    for slot in latest.slots:
        layer = kfac.layers[slot.name]
        bias_g = None if layer.bias_G is None else layer.bias_G.value
        held = EkfacBlock(slot, layer.weights, layer.bias) if ekfac else None
        blocks.append(KfacBlock(slot, Factors(layer.A.value, layer.G.value, bias_g), held))
    return blocks, kfac.layers[latest.slots[0].name].A.init


def running_factor_set(
    names: tuple[str, ...],
    problems: list[FisherProblem],
    config: KfacConfig,
    losses: list[FisherLoss] | None = None,
    fisher_type: str = "sampled",
    ekfac: bool = False,
    staleness: int = 0,
) -> FactorSet:
    """``running-K`` (K = len(problems)) for every variant in ``names``; with ``staleness`` s > 0,
    ``running-K-stale-s``: the factors after the first K − s problems (module docstring)."""
    if not 0 <= staleness < len(problems):
        raise ValueError(f"inverse staleness {staleness} needs more than {staleness} batches")
    held = len(problems) - staleness
    blocks, rules = {}, {}
    for name in names:
        strategy = variants.get(name)
        folded = None if losses is None else losses[:held]
        blocks[name], rule = running_blocks(strategy, problems[:held], config, folded, ekfac)
        rules[name] = describe_rule(rule)
    label = f"running-{len(problems)}" + (f"-stale-{staleness}" if staleness else "")
    return FactorSet(label, blocks, rules, config.stats_decay, fisher_type)
