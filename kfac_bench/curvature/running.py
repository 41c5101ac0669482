"""The shared running estimate of one factor; the variant (or config) chooses its start.

Recurrences (d = decay, S_k the k-th batch statistic, k = 1, 2, ...):

- ``first``          m_1 = S_1;                       m_k = d·m_{k−1} + (1−d)·S_k
- ``identity``       m_0 = I;                         m_k = d·m_{k−1} + (1−d)·S_k
  (alecwangcq/KFAC-Pytorch ``optimizers/kfac.py`` lines 59-70)
- ``zeros-average``  m_k = (1/k)·Σ_{i≤k} S_i for k ≤ n (the mean of the batches so far);  then
  the EMA. At k = n this is openai/baselines' plain average of its first n batches
  (``baselines/acktr/kfac.py`` lines 444-490, n = ``stats_accum_iter`` = 10). baselines starts
  from zeros and adds S_k/n, but never preconditions before the n-th batch (its cold iterations,
  lines 854-856, are SGD), so the partial sums 1/n, 2/n, … of the true scale are never used
  there. Here K-FAC steps may start earlier (``kfac.cold_iters`` < n), so before n the estimate
  is the mean so far — the same information at the right scale, never a partial sum.
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
            else:  # zeros-average: the mean of one batch
                self.value = new.clone()
        elif self.init.kind == "zeros-average" and self.count < self.init.steps:
            # running mean: m_k = m_{k−1} + (S_k − m_{k−1}) / k
            self.value.lerp_(new, 1.0 / (self.count + 1))
        else:
            # d·m + (1−d)·S as m + (1−d)·(S − m): one pass over m instead of two
            self.value.lerp_(new, 1.0 - d)
        self.count += 1
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
        self.count = int(state["count"])
