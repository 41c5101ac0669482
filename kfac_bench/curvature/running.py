"""The shared running estimate of one factor; the variant (or config) chooses its start.

Recurrences (d = decay, S_k the k-th batch statistic, k = 1, 2, ...):

- ``first``          m_1 = S_1;                       m_k = d·m_{k−1} + (1−d)·S_k
- ``identity``       m_0 = I;                         m_k = d·m_{k−1} + (1−d)·S_k
  (alecwangcq/KFAC-Pytorch ``optimizers/kfac.py`` lines 59-70)
- ``zeros-average``  m_0 = 0; m_k = m_{k−1} + S_k/n for k ≤ n;  then the EMA
  (openai/baselines ``baselines/acktr/kfac.py`` lines 444-490, n = ``stats_accum_iter`` = 10)
"""

from __future__ import annotations

import torch

from kfac_bench.curvature.factors import InitRule


class RunningAverage:
    """Running estimate m of a square factor, updated in place (no per-step allocation)."""

    def __init__(self, decay: float, init: InitRule, dtype: torch.dtype) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"stats decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.init = init
        self.dtype = dtype
        self.value: torch.Tensor | None = None
        self.count = 0

    def update(self, statistic: torch.Tensor) -> torch.Tensor:
        """Fold one batch statistic S_k into m; returns m."""
        new = statistic.to(self.dtype)
        d = self.decay
        if self.value is None:
            if self.init.kind == "first":
                self.value = new.clone()
            elif self.init.kind == "identity":
                eye = torch.eye(new.shape[0], dtype=new.dtype, device=new.device)
                self.value = eye.mul_(d).add_(new, alpha=1.0 - d)
            else:  # zeros-average
                self.value = new / self.init.steps
        elif self.init.kind == "zeros-average" and self.count < self.init.steps:
            self.value.add_(new, alpha=1.0 / self.init.steps)
        else:
            self.value.mul_(d).add_(new, alpha=1.0 - d)
        self.count += 1
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
        self.count = int(state["count"])
