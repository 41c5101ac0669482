"""Fisher fidelity: how close each variant's K-FAC is to the exact Fisher on the trained network.

On one batch (observations from rolling the policy, actions sampled from it, the value term's
noise ε), each variant's Kronecker-factored blocks — built from the trainer's Fisher pass on that
batch (Martens & Grosse 2015; KFC, Grosse & Martens 2016; K-FAC expand/reduce, Eschenhagen et
al. 2023), or the running averages the trainer would hold after K batches — are compared with two
exact references (``reference`` column):

- ``true-fisher``: the exact expectation over the categorical policy and the value noise,
  (1/B) Σ_n [J_nᵀ(diag p_n − p_n p_nᵀ)J_n + 4c²∇v_n∇v_nᵀ] (``expected.py``);
- ``sampled-fisher``: the sampled Fisher of the trainer's Fisher loss F = (1/B) Σ_n g_n g_nᵀ with
  the *same* actions and noise as the K-FAC side (per-example gradients by ``torch.func``), so the
  factorisation is the only difference.

Measured:

- per layer: ‖F_ll − F̃_l‖_F / ‖F_ll‖_F (dense, or Rademacher probes for large blocks) and the
  damped block direction (F̃_l⁻¹ g_l against (F_ll + λI)⁻¹ g_l);
- whole network: the exact damped natural gradient (F + λI)⁻¹ g against the variant's
  preconditioned gradient: cosine, norm ratio, predicted KL ½ dᵀ F d of both directions;
- eigenvalue clipping: eigen-directions zeroed per factor at τ (``invert_pair`` diagnostics).

Damping modes: ``eigen``, ``tikhonov``, ``tikhonov-pi`` (``invert_pair``) and ``ekfac`` (George et
al. 2018: the variant's Kronecker eigenbases with the diagonal s of the per-example Fisher-loss
gradients in that basis, ``eigenbasis.py``; its block error is that of Q diag(s) Qᵀ). Fisher type
(``fisher_type`` column): the K-FAC side is built from the trainer's sampled Fisher pass or from
the empirical one (per-example gradients of the training loss); the references stay the same.

Modules: ``layout`` (M-order parameter vector), ``exact`` (F's row model, products), ``expected``
(the true Fisher's rows), ``solvers`` (CG, row-space solve), ``references`` (one reference's
solves and probes), ``approx`` (the variants' blocks), ``eigenbasis`` (their EKFAC blocks),
``running`` (the trainer's running factors), ``metrics`` (pure comparisons), ``rows`` (tidy
rows), ``compare`` (the orchestration), ``batch`` (policy, rollouts, training gradient, the
empirical Fisher pass's loss), ``output`` (CSV, figure, all-or-none writes), ``command``
(:func:`fidelity`, validation, :func:`run_for_run_dir`), ``arguments`` (CLI flags).
"""

from kfac_bench.fidelity.arguments import add_arguments, run
from kfac_bench.fidelity.command import (
    CSV_NAME,
    DEFAULT_BATCH,
    Request,
    fidelity,
    run_for_run_dir,
    validate,
)
from kfac_bench.fidelity.compare import REFERENCES, Settings, measure
from kfac_bench.fidelity.output import COLUMNS

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "DEFAULT_BATCH",
    "REFERENCES",
    "Request",
    "Settings",
    "add_arguments",
    "fidelity",
    "measure",
    "run",
    "run_for_run_dir",
    "validate",
]
