"""Presets: tables of dotted config values that reproduce a reference setup or a tuned default.

A preset is data, never a code path. :func:`build_config` layers

    RunConfig defaults -> FAMILY_BASE[family of env] -> PRESETS[preset] -> overrides (--set)

so a preset that only names optimiser keys (``a2c``) inherits the environment family's rollout
and network, while a reference preset (``openai-baselines``) names its whole setup. The facts
behind each reference preset are in ../shared/REFERENCES.md (file:line in each repository).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfac_bench.config import (
    ConfigError,
    RunConfig,
    check_consistency,
    with_overrides,
)

EnvFamily = str  # "classic" | "minatar" | "atari" | "generic"


def env_family(env_id: str) -> EnvFamily:
    """Which defaults an environment id gets: MinAtar, Atari (ALE), classic control or generic."""
    if env_id.startswith("MinAtar/"):
        return "minatar"
    if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4"):
        return "atari"
    if env_id.split("-v")[0] in {"CartPole", "Acrobot", "MountainCar", "LunarLander"}:
        return "classic"
    return "generic"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any]


_VECTOR_OBS_BASE: dict[str, Any] = {
    "torch_threads": 1,
    "policy.arch": "mlp",
    "policy.activation": "tanh",
    "rollout.n_envs": 16,
    "rollout.n_steps": 16,
    "total_steps": 100_000,
}

# Per-family base layer: the network and batch shape that suit the observation type.
FAMILY_BASE: dict[EnvFamily, dict[str, Any]] = {
    "classic": _VECTOR_OBS_BASE,
    "generic": _VECTOR_OBS_BASE,
    "minatar": {
        "torch_threads": 1,
        "policy.arch": "minatar-cnn",
        "policy.activation": "relu",
        "rollout.n_envs": 16,
        "rollout.n_steps": 20,
        "total_steps": 1_000_000,
    },
    "atari": {
        "policy.arch": "nature-cnn",
        "policy.activation": "relu",
        "rollout.n_envs": 32,
        "rollout.n_steps": 20,
        "total_steps": 10_000_000,
    },
}

_BASELINES_ACKTR: dict[str, Any] = {
    # openai/baselines acktr.py:95-97 learn() defaults; KfacOptimizer args acktr.py:58-60.
    "rollout.n_envs": 32,
    "rollout.n_steps": 20,
    "rollout.gamma": 0.99,
    "rollout.gae_lambda": None,
    "loss.ent_coef": 0.01,
    "loss.vf_coef": 0.5,
    "loss.vf_fisher_coef": 1.0,
    "loss.value_loss": "mse",
    "optim.algo": "acktr",
    "optim.lr": 0.25,
    "optim.lr_schedule": "linear",
    "optim.max_grad_norm": 0.5,
    "kfac.damping": 0.01,
    "kfac.damping_mode": "eigen",
    "kfac.eigen_clip": 1e-6,
    "kfac.stats_decay": 0.99,
    "kfac.stats_every": 1,
    "kfac.inverse_every": 1,
    "kfac.kl_clip": 0.001,
    "kfac.trust_region": "baselines",
    "kfac.momentum": 0.9,
    "kfac.momentum_scale": "1-mu",
    "kfac.cold_iters": 10,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "classic-tuned",
            "default for classic control: actor-only natural gradient (lr 0.02), Adam critic ×8",
            {
                # chosen by 5- to 20-seed searches on CartPole-v1 (README "CartPole"): a small
                # natural-gradient lr (the δ = 0.05 trust region almost never binds) and a
                # critic fitted 8 times per batch, so that advantages vanish once solved
                "rollout.n_envs": 32,
                "rollout.n_steps": 16,
                "rollout.gae_lambda": 0.98,
                "rollout.normalize_advantages": False,
                "loss.ent_coef": 0.0,
                "optim.lr": 0.02,
                "optim.lr_schedule": "constant",
                "optim.critic": "separate-adam",
                "optim.critic_lr": 0.02,
                "optim.critic_steps": 8,
                "kfac.damping": 0.1,
                "kfac.stats_decay": 0.99,
                "kfac.inverse_every": 1,
                "kfac.kl_clip": 0.05,
                "kfac.momentum": 0.0,
            },
        ),
        Preset(
            "minatar-tuned",
            "default for MinAtar: 16×20 batch, baselines trust region, inverse every 10",
            {
                "rollout.gae_lambda": None,
                "loss.ent_coef": 0.01,
                "optim.lr": 0.25,
                "optim.lr_schedule": "linear",
                "kfac.damping": 0.01,
                "kfac.stats_decay": 0.99,
                "kfac.inverse_every": 10,
                "kfac.kl_clip": 0.001,
            },
        ),
        Preset(
            "openai-baselines",
            "openai/baselines ACKTR (TF1): 32×20, lr 0.25 linear, cold start 10, inverse every step",
            dict(_BASELINES_ACKTR),
        ),
        Preset(
            "stable-baselines",
            "hill-a/stable-baselines ACKTR: as openai-baselines with vf_coef 0.25, sync eigen",
            {**_BASELINES_ACKTR, "loss.vf_coef": 0.25},
        ),
        Preset(
            "ikostrikov",
            "ikostrikov/pytorch-a2c-ppo-acktr-gail: 32×20, inverse every 10, no lr decay",
            {
                **_BASELINES_ACKTR,
                "optim.lr_schedule": "constant",
                "kfac.inverse_every": 10,
                "kfac.cold_iters": 0,
            },
        ),
        Preset(
            "acktr-pytorch",
            "alirezakazemipour/ACKTR-PyTorch: 8×80, decay 0.95, inverse every 10, 2δ trust region",
            {
                **_BASELINES_ACKTR,
                "rollout.n_envs": 8,
                "rollout.n_steps": 80,
                "optim.lr_schedule": "constant",
                "kfac.stats_decay": 0.95,
                "kfac.inverse_every": 10,
                "kfac.trust_region": "acktr-paper",
                "kfac.cold_iters": 0,
            },
        ),
        Preset(
            "kfac-pytorch",
            "alecwangcq/KFAC-Pytorch optimiser in ACKTR: stats every 10, inverse every 100, lr·buf",
            {
                **_BASELINES_ACKTR,
                "optim.lr_schedule": "constant",
                "kfac.damping": 1e-3,
                "kfac.eigen_clip": 1e-10,
                "kfac.stats_decay": 0.95,
                "kfac.stats_every": 10,
                "kfac.inverse_every": 100,
                "kfac.momentum_scale": "1",
                "kfac.cold_iters": 0,
            },
        ),
        Preset(
            "notebook",
            "seed ACKTR notebook (CartPole): 1×128, GAE 0.95, actor K-FAC γ=0.03, Adam critic",
            {
                "rollout.n_envs": 1,
                "rollout.n_steps": 128,
                "rollout.gae_lambda": 0.95,
                "rollout.normalize_advantages": True,
                "loss.ent_coef": 0.0,
                "loss.value_loss": "half-mse",
                "optim.algo": "acktr",
                "optim.lr": 0.1,
                "optim.lr_schedule": "constant",
                "optim.max_grad_norm": None,
                "optim.critic": "separate-adam",
                "optim.critic_lr": 1e-3,
                "kfac.damping_mode": "tikhonov",
                "kfac.factor_damping": 0.03,
                "kfac.stats_decay": 0.95,
                "kfac.inverse_every": 1,
                "kfac.running_init": "first",
                "kfac.kl_clip": 0.01,
                "kfac.trust_region": "notebook",
                "kfac.momentum": 0.0,
                "kfac.cold_iters": 0,
            },
        ),
        Preset(
            "a2c",
            "first-order control: A2C, one network, RMSprop (lr 7e-4, α 0.99, ε 1e-5, clip 0.5)",
            {
                "optim.algo": "a2c",
                "optim.lr": 7e-4,
                "optim.lr_schedule": "linear",
                "optim.max_grad_norm": 0.5,
                "optim.rmsprop_alpha": 0.99,
                "optim.rmsprop_eps": 1e-5,
                # one network, one optimiser, also when layered over a separate-critic preset
                "optim.critic": "shared",
                "optim.critic_steps": 1,
            },
        ),
    ]
}

FAMILY_DEFAULT_PRESET: dict[EnvFamily, str] = {
    "classic": "classic-tuned",
    "generic": "classic-tuned",
    "minatar": "minatar-tuned",
    "atari": "openai-baselines",
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_config(
    env: str,
    *,
    variant: str = "paper",
    seed: int = 0,
    preset: str | None = None,
    total_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a full RunConfig from the layers (module docstring). Raises ConfigError.

    ``preset=None`` picks the environment family's default (FAMILY_DEFAULT_PRESET).
    """
    import variants  # the registry; imported here so config stays importable on its own

    variants.get(variant)  # unknown name -> ValueError naming the valid ones
    family = env_family(env)
    preset_name = preset or FAMILY_DEFAULT_PRESET[family]
    chosen = get_preset(preset_name)
    config = RunConfig(env=env, variant=variant, seed=seed, preset=preset_name)
    config = with_overrides(config, FAMILY_BASE[family])
    config = with_overrides(config, chosen.values)
    if total_steps is not None:
        config = with_overrides(config, {"total_steps": total_steps})
    return check_consistency(with_overrides(config, overrides or {}))
