"""``kfac-reduce``: reduce over positions before the outer products (Eschenhagen et al. 2023).

    A = (1/B) Σ_n ā_n ā_nᵀ with ā_n = mean_t ā_{n,t}   (homogeneous coordinate 1, last)
    G = (1/B) Σ_n (Σ_t ĝ_{n,t})(Σ_t ĝ_{n,t})ᵀ
    bias: homogeneous coordinate (bias_G = None)

For Linear layers (T = 1) this equals every other variant. On convolutions it is the cheap
approximation: K² and C_out² products over B rows instead of B·T.
Running average: first batch, then EMA.
Source: Eschenhagen et al. 2023, "Kronecker-Factored Approximate Curvature for Modern Neural
Network Architectures" (K-FAC-reduce); = openai/baselines ``approxT2`` (``baselines/acktr/kfac.py``
line 364, 404-405) and ikostrikov ``fast_cnn`` (``algo/kfac.py`` lines 33-36, 53-55) on weights.
"""

from kfac_bench.curvature.adapters import LayerBatch
from kfac_bench.curvature.factors import (
    Factors,
    FactorStrategy,
    InitRule,
    mean_patch_second_moment,
    summed_deriv_second_moment,
)


class KfacReduce(FactorStrategy):
    name = "kfac-reduce"
    summary = "K-FAC-reduce (Eschenhagen et al. 2023): mean patch ⊗ summed derivative; init: first"
    running_init = InitRule("first")

    def from_batch(self, batch: LayerBatch) -> Factors:
        return Factors(
            A=mean_patch_second_moment(batch, homogeneous=batch.has_bias),
            G=summed_deriv_second_moment(batch),
        )


STRATEGY = KfacReduce()
