"""Action distributions: Categorical for ``Discrete`` actions, diagonal Gaussian for ``Box``.

The policy network's head gives the distribution's parameters (``ActorCritic.forward`` returns
them as ``head``); :meth:`ActorCritic.distribution` wraps them in one of these classes, which
every update rule, loss and diagnostic uses through the same five methods. Shapes: B examples,
A actions (categories) or action dimensions.

* :class:`Categorical` — ``logits`` (B, A); actions (B,) long.
* :class:`DiagGaussian` — ``mean`` (B, A) from the network and a state-independent ``log_std``
  (A,) parameter (openai/baselines ``baselines/acktr/policies.py`` ``GaussianMlpPolicy``; SB3
  ``DiagGaussianDistribution``); actions (B, A) float, unclipped (the env clips them).

Formulas (per example; Σ over the A action dimensions):

    Gaussian  log π(a) = Σ_i −(a_i − μ_i)²/(2σ_i²) − log σ_i − ½ log 2π
              H        = Σ_i log σ_i + ½ log(2πe)
              KL(p‖q)  = Σ_i log(σ_q,i/σ_p,i) + (σ_p,i² + (μ_p,i − μ_q,i)²)/(2σ_q,i²) − ½
              ∂ log π/∂μ_i = (a_i − μ_i)/σ_i²,  ∂ log π/∂ log σ_i = (a_i − μ_i)²/σ_i² − 1
    Fisher of log σ (exact, any state): E[((a − μ)²/σ² − 1)²] = E[(z² − 1)²] = 2, z ~ N(0, 1),
    and zero between log σ and μ (E[z(z² − 1)] = 0): :data:`LOG_STD_FISHER`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The exact Fisher of each log σ_i of a diagonal Gaussian (module docstring), per example.
LOG_STD_FISHER = 2.0

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Categorical:
    """Softmax over ``logits`` (B, A)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.log_probs_all = F.log_softmax(logits, dim=-1)

    def sample(self) -> torch.Tensor:
        """(B,) long, by the Gumbel-max trick (one kernel; the torch RNG)."""
        uniform = torch.rand_like(self.logits).clamp_(1e-12, 1.0)
        return torch.argmax(self.logits - torch.log(-torch.log(uniform)), dim=-1)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """(B,) log π(a_n | s_n) for ``actions`` (B,) long."""
        return self.log_probs_all.gather(1, actions[:, None]).squeeze(1)

    def entropy(self) -> torch.Tensor:
        """(B,) −Σ_a p log p."""
        return -(self.log_probs_all.exp() * self.log_probs_all).sum(-1)

    def kl_from(self, old: Categorical) -> torch.Tensor:
        """(B,) KL(old ‖ self)."""
        return (old.log_probs_all.exp() * (old.log_probs_all - self.log_probs_all)).sum(-1)

    def detach(self) -> Categorical:
        return Categorical(self.logits.detach())


class DiagGaussian:
    """N(mean, diag(exp(log_std))²): ``mean`` (B, A), ``log_std`` (A,) shared by every state."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean = mean
        self.log_std = log_std

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def sample(self) -> torch.Tensor:
        """(B, A) μ + σ·ε, ε ~ N(0, I) from the torch RNG."""
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """(B,) Σ_i −(a_i − μ_i)²/(2σ_i²) − log σ_i − ½ log 2π for ``actions`` (B, A)."""
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """(B,) Σ_i log σ_i + ½ log(2πe)."""
        per_state = (self.log_std + 0.5 + _HALF_LOG_2PI).sum(-1)
        return per_state.expand(self.mean.shape[0])

    def kl_from(self, old: DiagGaussian) -> torch.Tensor:
        """(B,) KL(old ‖ self) in closed form (module docstring)."""
        var_new = torch.exp(2.0 * self.log_std)
        terms = (
            self.log_std
            - old.log_std
            + (torch.exp(2.0 * old.log_std) + (old.mean - self.mean).pow(2)) / (2.0 * var_new)
            - 0.5
        )
        return terms.sum(-1)

    def detach(self) -> DiagGaussian:
        """A frozen copy: log σ is a parameter stepped in place, so it is cloned."""
        return DiagGaussian(self.mean.detach(), self.log_std.detach().clone())


ActionDistribution = Categorical | DiagGaussian


def as_distribution(head: torch.Tensor | ActionDistribution) -> ActionDistribution:
    """A distribution as is; a bare tensor is taken as Categorical logits (B, A)."""
    return Categorical(head) if isinstance(head, torch.Tensor) else head
