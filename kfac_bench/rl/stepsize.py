"""The KL-adaptive stepsize of ACKTR's continuous-control code (``optim.lr_schedule = "kl-adaptive"``).

openai/baselines ``baselines/acktr/acktr_cont.py`` ``learn()``: after every policy update the
measured KL(π_old ‖ π_new) on the batch moves the stepsize (the K-FAC learning rate)

    KL > 2·target   ->  lr ← max(lr / factor, 1e-8)
    KL < target / 2 ->  lr ← min(lr · factor, 1)
    otherwise       ->  lr unchanged

with target 0.002 and factor 1.5 there (``optim.adaptive_target_kl``, ``optim.adaptive_factor``),
starting from ``optim.lr`` (0.03 there). The new lr is used from the next update on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_STEPSIZE = 1e-8
MAX_STEPSIZE = 1.0


@dataclass
class KlAdaptiveStepsize:
    """The current lr and the rule that moves it (module docstring)."""

    lr: float
    target_kl: float
    factor: float

    def observe(self, kl: float) -> float:
        """Move lr after an update whose measured KL was ``kl``; returns the new lr.

        A non-finite KL leaves lr unchanged (the trainer reports the divergence itself)."""
        if not math.isfinite(kl):
            return self.lr
        if kl > 2.0 * self.target_kl:
            self.lr = max(MIN_STEPSIZE, self.lr / self.factor)
        elif kl < 0.5 * self.target_kl:
            self.lr = min(MAX_STEPSIZE, self.lr * self.factor)
        return self.lr

    def state_dict(self) -> dict:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.lr = float(state["lr"])
