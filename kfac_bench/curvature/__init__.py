"""The curvature core, one role per module (as in kfac-jax):

- ``adapters``  layer geometry: (module, input, grad_output) -> canonical patches and derivatives
- ``factors``   the variant contract (``Factors``, ``FactorStrategy``) and the shared statistics
- ``capture``   hooks that record inputs/outputs only inside an explicit Fisher pass
- ``running``   the shared running average; the variant picks its initialisation
- ``inverse``   damping and inversion (``eigen``, ``tikhonov``, ``tikhonov-pi``, ``ekfac``)
- ``ekfac``     EKFAC's scaling statistic E_n[(Q_Gᵀ ∇W_n Q_A)²] from per-example gradients
- ``optimizer`` the preconditioned trust-region step (``KFAC``)
"""

from kfac_bench.curvature.factors import Factors, FactorStrategy, InitRule
from kfac_bench.curvature.optimizer import KFAC, KfacError, StepInfo

__all__ = ["KFAC", "FactorStrategy", "Factors", "InitRule", "KfacError", "StepInfo"]
