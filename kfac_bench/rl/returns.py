"""Returns and advantages over a rollout of T steps × N envs, with episode ends inside it.

Step t is (s_t, a_t) -> r_t, terminated_t, truncated_t. A terminated episode has no future value;
a truncated one (time limit) is bootstrapped from V(final_obs_t), the value of the observation the
episode was cut at (not the reset observation that follows it). ``last_value`` is V(s_T).

n-step (A2C/ACKTR; openai/baselines ``a2c/utils.py`` ``discount_with_dones``, plus truncation):
    R_t = r_t + γ·[(1 − d_t)·R_{t+1} + truncated_t·V(final_t)],   R_T = V(s_T),  d = term | trunc
GAE (Schulman et al. 2016):
    next_t = V(s_{t+1}) if not d_t;  V(final_t) if truncated_t;  0 if terminated_t
    δ_t = r_t + γ·next_t − V(s_t);   Â_t = δ_t + γλ(1 − d_t)·Â_{t+1};   R_t = Â_t + V(s_t)
"""

from __future__ import annotations

import torch


def nstep_returns(
    rewards: torch.Tensor,  # (T, N)
    terminated: torch.Tensor,  # (T, N) bool
    truncated: torch.Tensor,  # (T, N) bool
    final_values: torch.Tensor,  # (T, N) V(final_obs_t), used where truncated
    last_value: torch.Tensor,  # (N,)
    gamma: float,
) -> torch.Tensor:
    """Bootstrapped n-step returns (T, N)."""
    done = (terminated | truncated).float()
    boot = truncated.float() * (~terminated).float() * final_values
    returns = torch.empty_like(rewards)
    running = last_value
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * ((1.0 - done[t]) * running + boot[t])
        returns[t] = running
    return returns


def gae_advantages(
    rewards: torch.Tensor,  # (T, N)
    values: torch.Tensor,  # (T, N) V(s_t)
    terminated: torch.Tensor,  # (T, N) bool
    truncated: torch.Tensor,  # (T, N) bool
    final_values: torch.Tensor,  # (T, N)
    last_value: torch.Tensor,  # (N,)
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (T, N)."""
    done = (terminated | truncated).float()
    steps = rewards.shape[0]
    next_values = torch.cat([values[1:], last_value[None]], dim=0)
    next_values = torch.where(truncated & ~terminated, final_values, next_values)
    next_values = torch.where(terminated, torch.zeros_like(next_values), next_values)
    deltas = rewards + gamma * next_values - values
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(last_value)
    for t in range(steps - 1, -1, -1):
        running = deltas[t] + gamma * lam * (1.0 - done[t]) * running
        advantages[t] = running
    return advantages, advantages + values
