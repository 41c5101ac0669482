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
"""

from __future__ import annotations

import dataclasses

import variants
from kfac_bench.config import KfacConfig
from kfac_bench.curvature.factors import Factors, FactorStrategy, InitRule
from kfac_bench.curvature.optimizer import KFAC
from kfac_bench.fidelity.approx import KfacBlock
from kfac_bench.fidelity.exact import FisherProblem, fisher_terms
from kfac_bench.fidelity.layout import kfac_root
from kfac_bench.fidelity.rows import FactorSet


def describe_rule(rule: InitRule) -> str:
    """``first`` | ``identity`` | ``zeros-average(N)`` (the ``running_init`` column)."""
    return f"zeros-average({rule.steps})" if rule.kind == "zeros-average" else rule.kind


def running_blocks(
    strategy: FactorStrategy, problems: list[FisherProblem], config: KfacConfig
) -> tuple[list[KfacBlock], InitRule]:
    """The running factors after folding ``problems`` (oldest first) with the trainer's KFAC,
    and the start rule that KFAC resolved for them.

    Every problem shares one float64 policy and layer layout (``problems[-1].slots``).
    """
    if not problems:
        raise ValueError("running mode needs at least one Fisher batch")
    latest = problems[-1]
    policy = latest.policy
    # folding does not depend on how the factors are later damped or inverted: no step is taken
    settings = dataclasses.replace(
        config, dtype="float64", async_inverse=False, damping_mode="eigen"
    )
    kfac = KFAC(kfac_root(policy), strategy, settings, lr=1.0)
    try:
        for problem in problems:
            with kfac.fisher_pass() as fisher:
                logits, values = policy(problem.obs)
                loss = fisher_terms(
                    logits,
                    values,
                    problem.actions,
                    problem.noise,
                    problem.vf_fisher_coef,
                    problem.include_value,
                ).mean()
                fisher.backward(loss)
    finally:
        kfac.capture.remove()
    blocks = []
    for slot in latest.slots:
        layer = kfac.layers[slot.name]
        bias_g = None if layer.bias_G is None else layer.bias_G.value
        blocks.append(KfacBlock(slot, Factors(layer.A.value, layer.G.value, bias_g)))
    return blocks, kfac.layers[latest.slots[0].name].A.init


def running_factor_set(
    names: tuple[str, ...], problems: list[FisherProblem], config: KfacConfig
) -> FactorSet:
    """``running-K`` (K = len(problems)) for every variant in ``names``."""
    blocks, rules = {}, {}
    for name in names:
        blocks[name], rule = running_blocks(variants.get(name), problems, config)
        rules[name] = describe_rule(rule)
    return FactorSet(f"running-{len(problems)}", blocks, rules, config.stats_decay)
