"""The two exact references a variant is measured against, on one batch.

- ``true-fisher``: F = (1/B) Σ_n [J_nᵀ(diag p_n − p_n p_nᵀ)J_n + 4c²∇v_n∇v_nᵀ], the expectation of the
  trainer's sampled Fisher over actions and noise given the states (``expected.py``);
- ``sampled-fisher``: F = (1/B) Σ_n g_n g_nᵀ from the trainer's own Fisher pass (the batch's sampled
  actions and noise ε, ``exact.py``) — the very matrix whose blocks K-FAC factorises.

Per reference and λ: the network direction d* = (F + λI)⁻¹ g and the block-diagonal directions
d*_l = (F_ll + λI)⁻¹ g_l. Solves are exact in row space when the row Jacobian is stored
(:func:`~kfac_bench.fidelity.solvers.row_space_solve`), dense for small blocks, CG with exact
Fisher-vector products otherwise (jvp/vjp, large networks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kfac_bench.fidelity.exact import (
    FisherOperator,
    FisherProblem,
    JacobianFisher,
    RowModel,
    SampledRows,
    fisher_operator,
)
from kfac_bench.fidelity.expected import ExpectedRows
from kfac_bench.fidelity.layout import LayerSlot
from kfac_bench.fidelity.solvers import damped_solve, row_space_solve

TRUE_FISHER = "true-fisher"
SAMPLED_FISHER = "sampled-fisher"
REFERENCES = (TRUE_FISHER, SAMPLED_FISHER)


def row_model(name: str, problem: FisherProblem) -> RowModel:
    """The row model of reference ``name`` (ValueError naming the valid ones)."""
    if name == TRUE_FISHER:
        return ExpectedRows(problem)
    if name == SAMPLED_FISHER:
        return SampledRows(problem)
    raise ValueError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")


@dataclass(frozen=True)
class Solve:
    direction: torch.Tensor
    iterations: int  # 0: direct (dense or row-space) solve
    residual: float


def dense_solve(block: torch.Tensor, rhs: torch.Tensor, damping: float) -> Solve:
    eye = torch.eye(block.shape[0], dtype=block.dtype, device=block.device)
    damped = block + damping * eye
    x = torch.linalg.solve(damped, rhs)
    residual = float((damped @ x - rhs).norm() / rhs.norm()) if float(rhs.norm()) > 0 else 0.0
    return Solve(x, 0, residual)


class Reference:
    """One reference's exact F on the batch: dense blocks, solves and probe products (cached).

    ``name`` is ``true-fisher`` or ``sampled-fisher``; ``op`` its Fisher operator (M order).
    """

    def __init__(
        self,
        name: str,
        problem: FisherProblem,
        g: torch.Tensor,
        dense_limit: int,
        max_jacobian_bytes: float,
    ) -> None:
        self.name = name
        self.op: FisherOperator = fisher_operator(
            problem, max_jacobian_bytes, rows=row_model(name, problem)
        )
        self.slots = problem.slots
        self.g = g
        self.dense_blocks: dict[str, torch.Tensor] = {}
        for slot in self.slots:
            if slot.size**2 <= dense_limit:
                jac = self.op.block_jacobian(slot)
                self.dense_blocks[slot.name] = jac.T @ jac / self.op.batch
        self.network_dense: torch.Tensor | None = None
        if problem.dim**2 <= dense_limit:
            jac = self.op.block_jacobian(None)
            self.network_dense = jac.T @ jac / self.op.batch
        self.network: dict[float, Solve] = {}
        self.layers: dict[float, dict[str, Solve]] = {}
        # products on the shared probes (set by :meth:`probe`)
        self.network_products: torch.Tensor | None = None
        self.layer_products: dict[str, torch.Tensor] = {}
        self.frobenius: dict[str | None, float | None] = {}

    @property
    def stored(self) -> bool:
        """Whether the row Jacobian is stored (exact row-space solves, Gram-form norms)."""
        return isinstance(self.op, JacobianFisher)

    @property
    def rows(self) -> int:
        return int(self.op.rows)

    def _solve(self, rhs: torch.Tensor, damping: float, slot: LayerSlot | None, cg: dict) -> Solve:
        if slot is not None and slot.name in self.dense_blocks:
            return dense_solve(self.dense_blocks[slot.name], rhs, damping)
        if self.stored:
            result = row_space_solve(self.op, rhs, damping, slot)
        else:
            result = damped_solve(self.op, rhs, damping, slot, **cg)
        return Solve(result.x, result.iterations, result.residual)

    def solve(self, damping: float, cg_options: dict) -> None:
        """d* (network) and every d*_l at ``damping`` (once per λ)."""
        if damping in self.network:
            return
        self.network[damping] = self._solve(self.g, damping, None, cg_options)
        self.layers[damping] = {
            slot.name: self._solve(slot.take(self.g), damping, slot, cg_options)
            for slot in self.slots
        }

    def block_direction(self, damping: float) -> torch.Tensor:
        """The block-diagonal direction (d*_l)_l stacked, (P,)."""
        return torch.cat([self.layers[damping][s.name].direction for s in self.slots])

    def energy(self, x: torch.Tensor, slot: LayerSlot | None) -> torch.Tensor:
        """xᵀ F x (network) or x_lᵀ F_ll x_l (one layer)."""
        if slot is not None and slot.name in self.dense_blocks:
            return x @ self.dense_blocks[slot.name] @ x
        return self.op.energy(x, slot)

    def block_products(self, probes: torch.Tensor) -> dict[str, torch.Tensor]:
        """F_ll V_l for every layer (rows of V are probes)."""
        out = {}
        for slot in self.slots:
            v = slot.take(probes)
            dense = self.dense_blocks.get(slot.name)
            out[slot.name] = v @ dense if dense is not None else self.op.mv(v, slot)
        return out

    def probe(self, probes: torch.Tensor) -> None:
        """Exact products F V, F_ll V_l and Frobenius norms (Gram form when stored)."""
        self.network_products = self.op.mv(probes)
        self.layer_products = self.block_products(probes)
        self.frobenius = {s.name: self.op.frobenius_sq(s) for s in self.slots}
        self.frobenius[None] = self.op.frobenius_sq(None)

    def dense_block(self, slot: LayerSlot) -> torch.Tensor:
        """F_ll formed (cached when small; built from the layer's rows otherwise)."""
        block = self.dense_blocks.get(slot.name)
        if block is None:
            jac = self.op.block_jacobian(slot)
            block = jac.T @ jac / self.op.batch
        return block
