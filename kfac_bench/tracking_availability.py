"""Whether the tracking options a config asks for can be served, checked before anything runs.

Kept apart from :mod:`kfac_bench.tracking` and importing nothing but :mod:`kfac_bench.domains`,
so that :func:`kfac_bench.config.check_consistency` can call :func:`check_backends` without the
config layer importing the trainer-side tracking code.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path

from kfac_bench.domains import ConfigError

TENSORBOARD_HINT = 'pip install -e ".[tracking]" (or `make install`)'
WANDB_HINT = "pip install wandb into the project's environment"


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def wandb_key_present() -> bool:
    """An API key in ``WANDB_API_KEY`` or a netrc entry for the W&B host (what ``wandb login``
    writes), so ``log.wandb=online`` never falls back to an interactive login prompt."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_backends(tensorboard: bool, wandb: str) -> None:
    """Raise ConfigError (one line) when ``log.tensorboard`` / ``log.wandb`` need a package that
    is missing (or ``online`` a key that is not there)."""
    if tensorboard and not package_available("tensorboard"):
        raise ConfigError(
            f"log.tensorboard=true needs the tensorboard package, which is not installed: "
            f"{TENSORBOARD_HINT}, or set log.tensorboard=false"
        )
    if wandb != "off" and not package_available("wandb"):
        raise ConfigError(
            f"log.wandb={wandb} needs the wandb package, which is not installed: "
            f"{WANDB_HINT}, or set log.wandb=off"
        )
    if wandb == "online" and not wandb_key_present():
        raise ConfigError(
            "log.wandb=online needs a W&B API key (WANDB_API_KEY or `wandb login`); "
            "log.wandb=offline logs without one (upload later with `wandb sync`)"
        )
