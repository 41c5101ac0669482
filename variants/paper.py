"""``paper``: the KFC factors of Grosse & Martens (2016), as in ACKTR-PyTorch.

    A = Ω = (1/B) Σ_n Σ_t ā ā ᵀ        (homogeneous coordinate 1, last, when the layer has a bias)
    G = Γ = (1/(B·T)) Σ_n Σ_t ĝ ĝ ᵀ
    bias: folded into A through the homogeneous coordinate (bias_G = None)

Running average: initialised with the first batch, then EMA.
Source: alirezakazemipour/ACKTR-PyTorch ``brain/kfac.py`` ``_save_aa`` / ``_save_gg`` (lines 50-83
at 2948fb2); KFC eq. for Ω̂ and Γ̂ (the repository's ``misc/eq1.png``).
"""

from kfac_bench.curvature.adapters import LayerBatch
from kfac_bench.curvature.factors import (
    Factors,
    FactorStrategy,
    InitRule,
    deriv_second_moment,
    patch_second_moment,
)


class Paper(FactorStrategy):
    name = "paper"
    summary = (
        "KFC Ω and Γ (Grosse & Martens 2016), bias as homogeneous coordinate; init: first batch"
    )
    running_init = InitRule("first")

    def from_batch(self, batch: LayerBatch) -> Factors:
        return Factors(
            A=patch_second_moment(batch, homogeneous=batch.has_bias),
            G=deriv_second_moment(batch),
        )


STRATEGY = Paper()
