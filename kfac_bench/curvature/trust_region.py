"""The trust region's step scale ν (``kfac.trust_region``), given q = Σ_l ⟨F̃_l⁻¹g_l, g_l⟩::

    ν = min(ν_max, sqrt(δ / (lr²·q)))              "baselines"   openai/baselines acktr/kfac.py
                                                                 779-801 (also stable-baselines,
                                                                 ikostrikov, KFAC-Pytorch)
      = min(ν_max, sqrt(2δ / (lr²·q + 1e-6)))      "acktr-paper" ACKTR-PyTorch brain/kfac.py:130
      = min(ν_max, sqrt(δ / (q/2 + 1e-8)))         "notebook"    the seed notebook: ½·gᵀF⁻¹g, no lr²
      = 1                                          "none"

δ is ``kl_clip`` (schedulable per update). A negative q (possible in float32 with clipped
eigenvalues) counts as 0, which gives ν = ν_max.
"""

from __future__ import annotations

import torch


def trust_region_scale(
    q: torch.Tensor, lr: float, delta: float, rule: str, max_nu: float
) -> torch.Tensor:
    """ν (0-d, on q's device) for the rule named by ``kfac.trust_region``."""
    q = q.clamp_min(0.0)
    if rule == "none":
        return torch.ones_like(q)
    if rule == "baselines":
        bound = torch.sqrt(delta / (lr**2 * q))
    elif rule == "acktr-paper":
        bound = torch.sqrt(2.0 * delta / (lr**2 * q + 1e-6))
    else:  # notebook
        bound = torch.sqrt(delta / (0.5 * q + 1e-8))
    return bound.clamp(max=max_nu)  # q = 0 gives inf -> max_nu
