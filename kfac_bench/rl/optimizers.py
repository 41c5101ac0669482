"""First-order optimisers the controls need that torch does not ship with the right semantics."""

from __future__ import annotations

import torch


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop with TensorFlow 1 semantics, as openai/baselines A2C ran it.

    TF1 ``tf.train.RMSPropOptimizer`` (used by openai/baselines ``baselines/a2c/a2c.py``, decay α
    0.99, ε 1e-5) differs from ``torch.optim.RMSprop`` in two places; Stable-Baselines3 reproduces
    TF in ``stable_baselines3/common/sb2_compat/rmsprop_tf_like.py`` (``RMSpropTFLike``):

        v_0 = 1                              (torch: v_0 = 0)
        v_t = α·v_{t−1} + (1 − α)·g_t²
        θ_t = θ_{t−1} − lr · g_t / sqrt(v_t + ε)   (torch: g_t / (sqrt(v_t) + ε))

    With torch's v_0 = 0 and ε outside the root the first step is lr·g/(sqrt(1−α)·|g| + ε) ≈ 10·lr
    per coordinate; TF's is ≈ lr·g. No momentum, not centred (the baselines setting).
    """

    def __init__(self, params, lr: float = 7e-4, alpha: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "square_avg" not in state:
                    state["square_avg"] = torch.ones_like(p)
                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(p.grad, p.grad, value=1.0 - alpha)
                p.addcdiv_(p.grad, square_avg.add(eps).sqrt_(), value=-lr)
