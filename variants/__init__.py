"""Factor-statistic variants: one module each, registered here (one line per variant).

The contract (DESIGN.md §2, stable)::

    import variants
    strategy = variants.get("paper")          # unknown name -> ValueError naming every valid one
    variants.names()                          # all registered names
    f = strategy.factors(module, layer_input, grad_output)   # one batch, no averaging
    f.A, f.G, f.bias_G

To add a variant: write ``variants/<name>.py`` with a :class:`FactorStrategy` subclass bound to
``STRATEGY``, and add its module to ``_MODULES`` below.
"""

from __future__ import annotations

import importlib

from kfac_bench.curvature.factors import Factors, FactorStrategy, InitRule

_REGISTRY: dict[str, FactorStrategy] = {}

_MODULES = (
    "variants.paper",
    "variants.baselines",
    "variants.kfac_pytorch",
    "variants.ikostrikov",
    "variants.kfac_reduce",
)


def register(strategy: FactorStrategy) -> FactorStrategy:
    """Add a strategy under ``strategy.name``; a duplicate name is refused with ValueError."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"variant name {strategy.name!r} is already registered")
    _REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> FactorStrategy:
    """The registered strategy called ``name``; unknown names list every valid one."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown variant {name!r}; valid variants: {', '.join(names())}"
        ) from None


def names() -> list[str]:
    return list(_REGISTRY)


for _module in _MODULES:
    register(importlib.import_module(_module).STRATEGY)

__all__ = ["FactorStrategy", "Factors", "InitRule", "get", "names", "register"]
