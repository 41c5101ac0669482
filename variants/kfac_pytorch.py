"""``kfac-pytorch``: alecwangcq/KFAC-Pytorch's factors, identity-initialised.

    A = Ω / T²        (ones column appended, then the whole row divided by T: bias column 1/T)
    G = T² · Γ
    bias: homogeneous coordinate (bias_G = None)

Same factors as ``baselines``; the difference is the running average's start.
Running average: m_0 = I, then EMA, so m_1 = d·I + (1−d)·S_1 and the identity mass decays as d^k.
Source: alecwangcq/KFAC-Pytorch ``utils/kfac_utils.py`` ``ComputeCovA.conv2d`` / ``ComputeCovG.conv2d``
(lines 108-118, 153-168 at 25e6dbe); identity start in ``optimizers/kfac.py`` (lines 59-70).
"""

from kfac_bench.curvature.adapters import LayerBatch
from kfac_bench.curvature.factors import (
    Factors,
    FactorStrategy,
    InitRule,
    deriv_second_moment,
    patch_second_moment,
)


class KfacPytorch(FactorStrategy):
    name = "kfac-pytorch"
    summary = "alecwangcq/KFAC-Pytorch: A = Ω/T², G = T²Γ; init: identity, then EMA"
    running_init = InitRule("identity")

    def from_batch(self, batch: LayerBatch) -> Factors:
        t2 = float(batch.positions) ** 2
        return Factors(
            A=patch_second_moment(batch, homogeneous=batch.has_bias, scale=1.0 / t2),
            G=deriv_second_moment(batch, scale=t2),
        )


STRATEGY = KfacPytorch()
