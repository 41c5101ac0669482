"""The true Fisher: the exact expectation of the trainer's sampled Fisher over actions and noise.

The trainer's Fisher pass (``rl/losses.py`` ``fisher_loss``; openai/baselines
``baselines/acktr/acktr.py`` lines 36, 48-51) back-propagates, per example,

    ℓ_n = log π(a_n|s_n) − c·(v(s_n) − stopgrad(v(s_n) + ε_n))²,   a_n ~ π(·|s_n), ε_n ~ N(0, 1)

whose gradient is g_n = J_nᵀ(e_{a_n} − p_n) + 2cε_n ∇v_n (J_n the (A, P) logits Jacobian, p_n the
action probabilities, c = ``vf_fisher_coef``). The sampled Fisher (``exact.py``) is (1/B) Σ g_n g_nᵀ.
Its expectation over a_n and ε_n given the states (E[ε] = 0 removes the cross term, E[ε²] = 1) is

    F = (1/B) Σ_n [ J_nᵀ (diag p_n − p_n p_nᵀ) J_n + 4c² ∇v_n ∇v_nᵀ ]

(Martens 2020, *New insights and perspectives on the natural gradient method*: for an
exponential-family output the Fisher is the generalised Gauss-Newton matrix Jᵀ H J with H the output
distribution's own Fisher, diag p − p pᵀ for the categorical; 4c² for the value's Gaussian noise
term as the trainer scales it), with the value term only when the Fisher loss has it (shared
critic, c ≠ 0).

For a diagonal Gaussian policy N(μ_n, diag σ²) (σ fixed; ``exact.py``), ∇ log π = J_nᵀ Σ⁻¹(a − μ_n)
with J_n the (A, P) Jacobian of the mean, and E[(a − μ)(a − μ)ᵀ] = Σ gives the closed form

    F = (1/B) Σ_n [ J_nᵀ diag(σ⁻²) J_n + 4c² ∇v_n ∇v_nᵀ ]

(the Fisher of N(μ, Σ) in μ is Σ⁻¹: the Gauss-Newton form above with H = Σ⁻¹), whose rows are r_{n,i} = σ_i⁻¹ ∇μ_{n,i}:
W_n = diag(σ⁻¹) on the mean, the same for every state.

Row model (``exact.RowModel``): diag p − p pᵀ = Σ_a p_a (e_a − p)(e_a − p)ᵀ, so F = (1/B) Σ_i r_i r_iᵀ
over R = A (+1) rows per state,

    r_{n,a} = √p_{n,a} · ∇ log π(a|s_n)  (a = 1 … A),        r_{n,v} = 2c · ∇v_n,

i.e. r_n = W_n ∇(logits_n, v_n) with the constant (R, A+1) matrix W_n (p detached). The rows'
gradients come from ``vmap(jacrev)`` of θ -> W_n·outputs_n (stored Jacobian) or, for large nets,
``jvp``/``vjp`` of θ -> (W_n·outputs_n)_n (:class:`~kfac_bench.fidelity.exact.FunctionalFisher`).
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap

from kfac_bench.fidelity.exact import FisherProblem


def row_weights(
    head: torch.Tensor, value_scale: float | None, log_std: torch.Tensor | None = None
) -> torch.Tensor:
    """W (B, R, O): the rows of the output distribution's Fisher; the value row is 2c on v.

    ``head`` (B, A): Categorical logits (row a is √p_a (e_a − p)), or the Gaussian mean when
    ``log_std`` (A,) is given (row i is σ_i⁻¹ e_i). ``value_scale`` 2c, or None without a value
    term (then O = R = A; else O = R = A + 1, the value output last).
    """
    head = head.detach()
    batch, actions = head.shape
    eye = torch.eye(actions, dtype=head.dtype, device=head.device)
    if log_std is None:
        p = torch.softmax(head, dim=-1)
        head_rows = p.sqrt()[:, :, None] * (eye[None] - p[:, None, :])  # (B, A, A)
    else:
        inv_std = torch.exp(-log_std.detach()).to(head.dtype)
        head_rows = (eye * inv_std[:, None]).expand(batch, actions, actions)
    if value_scale is None:
        return head_rows
    weights = head.new_zeros(batch, actions + 1, actions + 1)
    weights[:, :actions, :actions] = head_rows
    weights[:, actions, actions] = value_scale
    return weights


class ExpectedRows:
    """The true Fisher's row model on a :class:`FisherProblem` (module docstring)."""

    def __init__(self, problem: FisherProblem) -> None:
        self.problem = problem
        self.with_value = bool(problem.include_value and problem.vf_fisher_coef)
        with torch.no_grad():
            head, _ = problem.policy(problem.obs)
        scale = 2.0 * problem.vf_fisher_coef if self.with_value else None
        self.weights = row_weights(head, scale, problem.log_std)  # (B, R, O)
        self.per_example = int(self.weights.shape[1])

    def _outputs(self, head: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(…, A) head and (…,) values -> (…, O)."""
        if not self.with_value:
            return head
        return torch.cat([head, values[..., None]], dim=-1)

    def terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """θ -> (W_n·outputs_n)_n flattened, shape (B·R,): J v and Jᵀ u by jvp/vjp of this."""
        frozen = self.problem.frozen()
        head, values = functional_call(self.problem.policy, (params, frozen), (self.problem.obs,))
        out = self._outputs(head, values)
        return torch.einsum("bro,bo->br", self.weights, out).reshape(-1)

    def gradients(
        self, keys: tuple[str, ...] | None = None, chunk_size: int = 64
    ) -> dict[str, torch.Tensor]:
        """{key: (B·R, *param.shape)}: row (n, r) is r_{n,r} (``keys`` restricts the parameters)."""
        problem = self.problem
        params = problem.params()
        wanted = params if keys is None else {k: params[k] for k in keys}
        fixed = {k: v for k, v in params.items() if k not in wanted}
        frozen = {**problem.frozen(), **fixed}

        def single(p: dict, obs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            head, value = functional_call(problem.policy, (p, frozen), (obs[None],))
            return weights @ self._outputs(head[0], value[0])

        grads = vmap(jacrev(single), in_dims=(None, 0, 0), chunk_size=chunk_size)(
            wanted, problem.obs, self.weights
        )
        rows = problem.batch * self.per_example
        return {k: v.reshape(rows, *v.shape[2:]) for k, v in grads.items()}
