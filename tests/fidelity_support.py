"""Shared pieces of the fidelity tests: one torch thread per module, and a tiny float64 problem."""

from __future__ import annotations

import pytest
import torch

from kfac_bench.config import PolicyConfig
from kfac_bench.fidelity.exact import FisherProblem
from kfac_bench.fidelity.layout import build_slots
from kfac_bench.rl.policies import build_policy

COEF = 0.7  # vf_fisher_coef: the value term's weight 4c² = 1.96 is visibly not 1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: one thread is faster (and steadier on a shared two-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed: int, batch: int = 6, actions: int = 3, include_value: bool = True) -> FisherProblem:
    """A 4-input MLP (hidden 5) with a shared value head, its batch, sampled actions and ε."""
    torch.manual_seed(seed)
    policy = build_policy((4,), actions, PolicyConfig(hidden=(5,))).double()
    obs = torch.randn(batch, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, _ = policy(obs)
    acts = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
    noise = torch.randn(batch, generator=gen, dtype=torch.float64)
    return FisherProblem(policy, build_slots(policy), obs, acts, noise, COEF, include_value)
