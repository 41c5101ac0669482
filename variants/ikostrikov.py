"""``ikostrikov``: split bias, as in pytorch-a2c-ppo-acktr-gail (and baselines as run on Atari).

    A = Ω_ww / T²     (weights only; no homogeneous coordinate)
    G = T² · Γ
    bias_G = (1/B) Σ_n (Σ_t ĝ_{n,t})(Σ_t ĝ_{n,t})ᵀ    (the bias's own block, with A_b = 1)

The bias block is the exact Fisher block of the bias (it keeps the t≠t' cross terms that Ω_bb·Γ
drops) and is decoupled from the weights: a structural difference from ``paper``.
Running average: first batch, then EMA.
Source: ikostrikov/pytorch-a2c-ppo-acktr-gail ``a2c_ppo_acktr/algo/kfac.py`` ``compute_cov_a`` /
``compute_cov_g`` and ``SplitBias`` (lines 29-64, 74-108 at 41332b7); openai/baselines TF1 ``+ b``
bias path in ``baselines/acktr/kfac.py`` (lines 115-125, 415-423).
"""

from kfac_bench.curvature.adapters import LayerBatch
from kfac_bench.curvature.factors import (
    Factors,
    FactorStrategy,
    InitRule,
    deriv_second_moment,
    patch_second_moment,
    summed_deriv_second_moment,
)


class Ikostrikov(FactorStrategy):
    name = "ikostrikov"
    summary = "ikostrikov / baselines-on-Atari: weights Ω_ww/T² ⊗ T²Γ, bias its own exact block"
    running_init = InitRule("first")

    def from_batch(self, batch: LayerBatch) -> Factors:
        t2 = float(batch.positions) ** 2
        return Factors(
            A=patch_second_moment(batch, homogeneous=False, scale=1.0 / t2),
            G=deriv_second_moment(batch, scale=t2),
            bias_G=summed_deriv_second_moment(batch) if batch.has_bias else None,
        )


STRATEGY = Ikostrikov()
