"""``baselines``: openai/baselines' spatial scaling (the BiasAdd path).

    A = Ω / T²        (rows ā/T, so the bias column is 1/T)
    G = T² · Γ
    bias: homogeneous coordinate (bias_G = None)

A⊗G = Ω⊗Γ exactly: the T² only moves between the factors, so the update differs from ``paper``
only through per-factor eigenvalue clipping, per-factor damping and the running-average start.
Running average: zeros, a plain average of the first 10 batches (S += S_k/10), then EMA.
Source: openai/baselines ``baselines/acktr/kfac.py`` ``compute_stats`` (lines 357-384 for A, 397-423
for G, 444-490 for the accumulation, at ea25b9e).
"""

from kfac_bench.curvature.adapters import LayerBatch
from kfac_bench.curvature.factors import (
    Factors,
    FactorStrategy,
    InitRule,
    deriv_second_moment,
    patch_second_moment,
)


class Baselines(FactorStrategy):
    name = "baselines"
    summary = "openai/baselines: A = Ω/T², G = T²Γ (same A⊗G); init: zeros + plain mean of 10"
    running_init = InitRule("zeros-average", steps=10)

    def from_batch(self, batch: LayerBatch) -> Factors:
        t2 = float(batch.positions) ** 2
        return Factors(
            A=patch_second_moment(batch, homogeneous=batch.has_bias, scale=1.0 / t2),
            G=deriv_second_moment(batch, scale=t2),
        )


STRATEGY = Baselines()
