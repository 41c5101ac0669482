"""The exact (sampled) Fisher of the trainer's Fisher loss and its products (solves: ``solvers.py``).

Per-example Fisher loss term (the trainer's Fisher pass, ``rl/trainer.py`` ``fisher_loss``;
openai/baselines ``acktr/acktr.py`` lines 36, 48-51), with a_n sampled from the policy and
ε_n ~ N(0, 1) drawn once and shared with the K-FAC side:

    ℓ_n(θ) = log π_θ(a_n | s_n) − c · (v_θ(s_n) − stopgrad(v_θ(s_n) + ε_n))²     (c = vf_fisher_coef)

so that ``mean_n ℓ_n`` is exactly the trainer's Fisher loss. For a diagonal Gaussian policy
(``log_std`` set) π is N(μ_θ(s), diag σ²) with σ fixed here: log σ is not a K-FAC layer (it is
stepped by its exact diagonal Fisher or by SGD, ``policy.log_std_update``), so the comparison
covers the mean network's layers, with a_n ~ π sampled in the rollout. With per-example gradients
g_n = ∇_θ ℓ_n (rows of the Jacobian J, (B, P), computed with ``torch.func``: ``functional_call`` +
``vmap(grad)``), the exact sampled Fisher on the batch is

    F = (1/B) Σ_n g_n g_nᵀ = JᵀJ / B                      (Martens & Grosse 2015, §2 / eq. 1)

K-FAC approximates each diagonal block F_ll of this very matrix (same batch, same a_n, ε_n).
Fisher-vector products never form F: ``F v = Jᵀ(J v)/B`` from the stored Jacobian when it fits
in memory (:class:`JacobianFisher`), else ``J v`` by forward-mode ``jvp`` and ``Jᵀ u`` by ``vjp``
of the map θ -> (ℓ_1 … ℓ_B) (:class:`FunctionalFisher`). Both are exact.

Both operators only need a *row model*: N = B·R rows r_i with F = (1/B) Σ_i r_i r_iᵀ. The sampled
Fisher above is R = 1 (:class:`SampledRows`); the true Fisher (``expected.py``) has R rows per
state. With a stored Jacobian, (F + λI)⁻¹ g is solved exactly in the N-dimensional row space
(:func:`kfac_bench.fidelity.solvers.row_space_solve`, Woodbury) instead of by CG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from kfac_bench.fidelity.layout import LayerSlot, flatten, kfac_parameters, total_size, unflatten
from kfac_bench.rl.distributions import ActionDistribution, Categorical, DiagGaussian


def fisher_terms(
    head: torch.Tensor,
    values: torch.Tensor,
    actions: torch.Tensor,
    noise: torch.Tensor,
    vf_fisher_coef: float,
    include_value: bool,
    log_std: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example Fisher loss ℓ_n, shape (B,). ``mean`` of it = ``trainer.fisher_loss``.

    head (B, A): Categorical logits, or the Gaussian mean when ``log_std`` (A,) is given; values
    (B,); actions (B,) long or (B, A) float; noise ε (B,).
    """
    terms = action_distribution(head, log_std).log_prob(actions)
    if include_value and vf_fisher_coef:
        target = (values + noise).detach()
        terms = terms - vf_fisher_coef * (values - target).pow(2)
    return terms


def action_distribution(head: torch.Tensor, log_std: torch.Tensor | None) -> ActionDistribution:
    """The policy's distribution of a head: DiagGaussian(head, log_std), or Categorical(head)."""
    return Categorical(head) if log_std is None else DiagGaussian(head, log_std)


@dataclass(frozen=True)
class FisherProblem:
    """One batch on which the exact and the K-FAC Fisher are compared.

    ``policy(obs) -> (head (B, A), values (B,))``; ``obs`` (B, *obs_shape); ``actions`` (B,) long
    or (B, A) float, sampled from the policy; ``noise`` (B,) the value term's ε. ``slots`` are the
    K-FAC layers. ``log_std`` (A,), detached: the Gaussian policy's log σ (None: Categorical).
    """

    policy: nn.Module
    slots: list[LayerSlot]
    obs: torch.Tensor
    actions: torch.Tensor
    noise: torch.Tensor
    vf_fisher_coef: float
    include_value: bool
    log_std: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.obs.shape[0])

    @property
    def dim(self) -> int:
        return total_size(self.slots)

    def params(self) -> dict[str, torch.Tensor]:
        return kfac_parameters(self.policy, self.slots)

    def frozen(self) -> dict[str, torch.Tensor]:
        """Everything ``functional_call`` needs besides the covered parameters."""
        covered = {key for slot in self.slots for key in slot.keys}
        state = {k: v.detach() for k, v in self.policy.named_parameters() if k not in covered}
        state.update({k: v for k, v in self.policy.named_buffers()})
        return state

    def terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """θ (covered parameters) -> (ℓ_1 … ℓ_B)."""
        head, values = functional_call(self.policy, (params, self.frozen()), (self.obs,))
        return fisher_terms(
            head,
            values,
            self.actions,
            self.noise,
            self.vf_fisher_coef,
            self.include_value,
            self.log_std,
        )


class SampledRows:
    """The sampled Fisher's row model: one row g_n = ∇ℓ_n per example (R = 1)."""

    per_example = 1

    def __init__(self, problem: FisherProblem) -> None:
        self.problem = problem

    def terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """θ -> (ℓ_1 … ℓ_B), shape (B,)."""
        return self.problem.terms(params)

    def gradients(
        self, keys: tuple[str, ...] | None = None, chunk_size: int = 64
    ) -> dict[str, torch.Tensor]:
        """{key: (B, *param.shape)}: the rows' gradients."""
        return per_example_gradients(self.problem, keys, chunk_size)


def per_example_gradients(
    problem: FisherProblem, keys: tuple[str, ...] | None = None, chunk_size: int = 64
) -> dict[str, torch.Tensor]:
    """g_n = ∇ ℓ_n for every example: {key: (B, *param.shape)} (``vmap(grad)``, chunked).

    ``keys`` restricts the differentiation to some covered parameters (default all).
    """
    params = problem.params()
    wanted = params if keys is None else {k: params[k] for k in keys}
    fixed = {k: v for k, v in params.items() if k not in wanted}
    frozen = {**problem.frozen(), **fixed}

    def single(p: dict, obs: torch.Tensor, action: torch.Tensor, eps: torch.Tensor):
        head, value = functional_call(problem.policy, (p, frozen), (obs[None],))
        return fisher_terms(
            head,
            value,
            action[None],
            eps[None],
            problem.vf_fisher_coef,
            problem.include_value,
            problem.log_std,
        )[0]

    return vmap(grad(single), in_dims=(None, 0, 0, 0), chunk_size=chunk_size)(
        wanted, problem.obs, problem.actions, problem.noise
    )


def jacobian(problem: FisherProblem, chunk_size: int = 64) -> torch.Tensor:
    """J (B, P) in M order: row n is g_n."""
    return flatten(problem.slots, per_example_gradients(problem, chunk_size=chunk_size), lead=1)


def layer_jacobians(
    problem: FisherProblem, chunk_size: int = 64, rows: RowModel | None = None
) -> list[torch.Tensor]:
    """[J_l (N, P_l)] per layer in M order (the columns of :func:`jacobian`, contiguous).

    ``rows``: the row model (default :class:`SampledRows`, N = B)."""
    rows = rows or SampledRows(problem)
    grads = rows.gradients(chunk_size=chunk_size)
    return [flatten([_at_zero(slot)], grads, lead=1) for slot in problem.slots]


class JacobianFisher:
    """F = JᵀJ/B from stored row gradients, one contiguous (N, P_l) block per layer.

    ``batch`` is the normaliser B (default N: one row per example). Network products sum over
    the layer blocks (J v = Σ_l J_l v_l), so no product ever reads a strided column slice of the
    full (N, P) matrix.
    """

    def __init__(
        self, blocks: list[torch.Tensor], slots: list[LayerSlot], batch: int | None = None
    ) -> None:
        self.blocks = {slot.name: block.contiguous() for slot, block in zip(slots, blocks)}
        self.slots = slots
        self.rows = blocks[0].shape[0]
        self.batch = self.rows if batch is None else batch
        self._grams: dict[str, torch.Tensor] = {}

    @classmethod
    def from_jacobian(cls, jac: torch.Tensor, slots: list[LayerSlot]) -> JacobianFisher:
        """From a full (B, P) Jacobian in M order."""
        return cls([slot.take(jac) for slot in slots], slots)

    def jv(self, v: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        """(…, P_l) -> (…, B): u_n = g_nᵀ v (the whole network when ``slot`` is None)."""
        if slot is not None:
            return v @ self.blocks[slot.name].T
        return sum(s.take(v) @ self.blocks[s.name].T for s in self.slots)

    def jtu(self, u: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        """(…, B) -> (…, P_l): Σ_n u_n g_n."""
        if slot is not None:
            return u @ self.blocks[slot.name]
        return torch.cat([u @ self.blocks[s.name] for s in self.slots], dim=-1)

    def block_jacobian(self, slot: LayerSlot | None) -> torch.Tensor:
        """J_l (B, P_l), or the full J (B, P) for ``None``."""
        if slot is not None:
            return self.blocks[slot.name]
        return torch.cat([self.blocks[s.name] for s in self.slots], dim=1)

    def gram(self, slot: LayerSlot | None = None) -> torch.Tensor:
        """J_l J_lᵀ (N, N), or J Jᵀ = Σ_l J_l J_lᵀ for ``None`` (cached per layer)."""
        for s in self.slots if slot is None else [slot]:
            if s.name not in self._grams:
                self._grams[s.name] = self.blocks[s.name] @ self.blocks[s.name].T
        if slot is not None:
            return self._grams[slot.name]
        return sum(self._grams[s.name] for s in self.slots)

    def frobenius_sq(self, slot: LayerSlot | None = None) -> float:
        """‖F_ll‖²_F = ‖J_l J_lᵀ‖²_F / B² (Gram form; exact, never forms F)."""
        return float(self.gram(slot).pow(2).sum()) / self.batch**2

    def mv(self, v: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        """F v (or F_ll v_l), batched over leading dimensions of v."""
        return self.jtu(self.jv(v, slot), slot) / self.batch

    def energy(self, v: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        """vᵀ F v = ‖J v‖² / B, per leading index."""
        return self.jv(v, slot).pow(2).sum(-1) / self.batch


class FunctionalFisher:
    """F v without the Jacobian: u = J v by ``jvp``, Jᵀ u by ``vjp`` of θ -> (r_1 … r_N).

    ``rows`` is the row model (default :class:`SampledRows`: θ -> (ℓ_1 … ℓ_B)). Memory is one
    forward/backward of the batch; ``block_jacobian`` builds a single layer's row gradients (only
    requested for blocks small enough to form densely).
    """

    def __init__(
        self, problem: FisherProblem, chunk_size: int = 64, rows: RowModel | None = None
    ) -> None:
        self.problem = problem
        self.model = rows or SampledRows(problem)
        self.slots = problem.slots
        self.batch = problem.batch
        self.rows = problem.batch * self.model.per_example
        self.params = problem.params()
        self.chunk_size = chunk_size

    def _subset(self, slot: LayerSlot | None) -> tuple[list[LayerSlot], dict, Callable]:
        slots = self.slots if slot is None else [slot]
        keys = [k for s in slots for k in s.keys]
        sub = {k: self.params[k] for k in keys}
        rest = {k: v for k, v in self.params.items() if k not in sub}
        return slots, sub, lambda p: self.model.terms({**rest, **p})

    def jv(self, v: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        slots, sub, fn = self._subset(slot)
        rows = v.reshape(-1, v.shape[-1])
        shifted = [s if slot is None else _at_zero(s) for s in slots]
        out = [jvp(fn, (sub,), (unflatten(shifted, row),))[1] for row in rows]
        return torch.stack(out).reshape(*v.shape[:-1], self.rows)

    def jtu(self, u: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        slots, sub, fn = self._subset(slot)
        _, pullback = vjp(fn, sub)
        rows = u.reshape(-1, u.shape[-1])
        shifted = [s if slot is None else _at_zero(s) for s in slots]
        out = [flatten(shifted, pullback(row)[0]) for row in rows]
        return torch.stack(out).reshape(*u.shape[:-1], -1)

    def block_jacobian(self, slot: LayerSlot | None) -> torch.Tensor:
        """J_l (B, P_l) built on demand (``None``: the full J; small networks only)."""
        if slot is None:
            grads = self.model.gradients(chunk_size=self.chunk_size)
            return flatten(self.slots, grads, lead=1)
        grads = self.model.gradients(slot.keys, self.chunk_size)
        return flatten([_at_zero(slot)], grads, lead=1)

    def frobenius_sq(self, slot: LayerSlot | None = None) -> float | None:
        return None  # estimated from probes by the caller

    def mv(self, v: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        return self.jtu(self.jv(v, slot), slot) / self.batch

    def energy(self, v: torch.Tensor, slot: LayerSlot | None = None) -> torch.Tensor:
        return self.jv(v, slot).pow(2).sum(-1) / self.batch


def _at_zero(slot: LayerSlot) -> LayerSlot:
    """The same slot with offset 0 (to address a single layer's own vector)."""
    return LayerSlot(slot.name, slot.module, slot.weight_key, slot.bias_key, slot.c_out, slot.k, 0)


FisherOperator = JacobianFisher | FunctionalFisher


class RowModel(Protocol):
    """N = B·``per_example`` rows r_i with F = (1/B) Σ_i r_i r_iᵀ (module docstring)."""

    per_example: int

    def terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def gradients(
        self, keys: tuple[str, ...] | None = None, chunk_size: int = 64
    ) -> dict[str, torch.Tensor]: ...


def fisher_operator(
    problem: FisherProblem,
    max_jacobian_bytes: float,
    chunk_size: int = 64,
    rows: RowModel | None = None,
) -> FisherOperator:
    """The Jacobian form when N·P entries fit in ``max_jacobian_bytes``, else the functional one.

    ``rows``: the row model (default :class:`SampledRows`, the sampled Fisher)."""
    rows = rows or SampledRows(problem)
    itemsize = next(iter(problem.params().values())).element_size()
    if problem.batch * rows.per_example * problem.dim * itemsize <= max_jacobian_bytes:
        blocks = layer_jacobians(problem, chunk_size, rows)
        return JacobianFisher(blocks, problem.slots, batch=problem.batch)
    return FunctionalFisher(problem, chunk_size, rows)
