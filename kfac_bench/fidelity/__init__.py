"""Fisher fidelity: how close each variant's K-FAC is to the exact Fisher on the trained network.

On one batch (observations from rolling the policy, actions sampled from it, the value term's
noise ε), the exact sampled Fisher of the trainer's Fisher loss F = (1/B) Σ_n g_n g_nᵀ (per-example
gradients by ``torch.func``) is compared with each variant's Kronecker-factored blocks built from
the *same* Fisher pass (Martens & Grosse 2015; KFC, Grosse & Martens 2016; K-FAC expand/reduce,
Eschenhagen et al. 2023), so the approximation is the only difference:

- per layer: ‖F_ll − F̃_l‖_F / ‖F_ll‖_F (dense, or Rademacher probes for large blocks) and the
  damped block direction (F̃_l⁻¹ g_l against (F_ll + λI)⁻¹ g_l);
- whole network: the exact damped natural gradient (F + λI)⁻¹ g by CG against the variant's
  preconditioned gradient: cosine, norm ratio, predicted KL ½ dᵀ F d of both directions;
- eigenvalue clipping: eigen-directions zeroed per factor at τ (``invert_pair`` diagnostics).

Modules: ``layout`` (M-order parameter vector), ``exact`` (F, its products, CG), ``approx`` (the
variants' blocks), ``metrics`` (pure comparisons), ``compare`` (rows), ``batch`` (policy, rollout,
training gradient), ``output`` (CSV, figure), ``command`` (CLI, :func:`run_for_run_dir`).
"""

from kfac_bench.fidelity.command import (
    CSV_NAME,
    DEFAULT_BATCH,
    Request,
    add_arguments,
    fidelity,
    run,
    run_for_run_dir,
)
from kfac_bench.fidelity.compare import Settings, measure
from kfac_bench.fidelity.output import COLUMNS

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "DEFAULT_BATCH",
    "Request",
    "Settings",
    "add_arguments",
    "fidelity",
    "measure",
    "run",
    "run_for_run_dir",
]
