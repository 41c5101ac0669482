"""Presets: tables of dotted config values that reproduce a reference setup or a tuned default.

A preset is data, never a code path. :func:`build_config` layers

    RunConfig defaults -> FAMILY_BASE[family of env] -> PRESETS[preset] -> overrides (--set)

so a preset that only names optimiser keys (``a2c``) inherits the environment family's rollout
and network, while a reference preset (``openai-baselines``) names its whole setup. The facts
behind each reference preset are in ../shared/REFERENCES.md (file:line in each repository).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kfac_bench.config import (
    IDENTITY_FLAGS,
    ConfigError,
    RunConfig,
    check_consistency,
    check_domains,
    with_overrides,
)
from kfac_bench.presets_continuous import (
    A2C_ZOO_CONTINUOUS,
    BASELINES_ACKTR_CONT,
    PPO_CLEANRL_CONTINUOUS,
)
from kfac_bench.rl.envs import EnvFamily, env_family


@dataclass(frozen=True)
class Preset:
    """Dotted config values; ``per_family`` and then ``per_env`` override ``values`` where a source
    sets a value per environment family (the controls' batch) or per task (rl-zoo tables)."""

    name: str
    description: str
    values: dict[str, Any]
    per_family: dict[EnvFamily, dict[str, Any]] = field(default_factory=dict)
    per_env: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values_for(self, env_id: str, family: EnvFamily) -> dict[str, Any]:
        """The preset's values for one environment: values, then per_family, then per_env."""
        return {**self.values, **self.per_family.get(family, {}), **self.per_env.get(env_id, {})}


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
        # torch's own thread count (a sweep worker's share of the cores): K-FAC's 1025-wide fc
        # products and decompositions use a free core, a sweep with one worker per core runs one
        # thread each (issue 16: 0.65 → 0.74–0.79 of A2C's env-steps/s alone, A2C unchanged)
        "torch_threads": 0,
        "policy.arch": "minatar-cnn",
        "policy.activation": "relu",
        "rollout.n_envs": 16,
        "rollout.n_steps": 20,
        "total_steps": 1_000_000,
    },
    # MuJoCo and the Box-action classic tasks: separate 64-64 tanh actor and critic (baselines
    # GaussianMlpPolicy; SB3/CleanRL MlpPolicy), one env, observations normalised
    "continuous": {
        "torch_threads": 1,
        "policy.arch": "mlp",
        "policy.activation": "tanh",
        "policy.hidden": (64, 64),
        "policy.shared_trunk": False,
        "rollout.n_envs": 1,
        "rollout.n_steps": 2048,
        "normalize.obs": True,
        "log.update_every": 1,  # an update is a few thousand steps here
        "log.checkpoint_every": 20,
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

# --- first-order controls -------------------------------------------------------------------
# Every key a control's result depends on is named, so a control layered over any family base or
# spec preset computes what its source computes.
_FIRST_ORDER_COMMON: dict[str, Any] = {
    "optim.critic": "shared",  # one optimiser over actor and critic
    "optim.critic_steps": 1,
    "optim.max_grad_norm": 0.5,
    "loss.vf_coef": 0.5,
    "rollout.gamma": 0.99,
}

# openai/baselines baselines/a2c/a2c.py learn(): nsteps 5, ent 0.01, vf 0.5, max_grad_norm 0.5,
# lr 7e-4 lrschedule "linear", RMSProp alpha 0.99 epsilon 1e-5 (TF1 semantics); 16 envs
# (baselines/run.py Atari default num_env for a2c; rl-zoo a2c.yml atari n_envs 16).
_A2C: dict[str, Any] = {
    **_FIRST_ORDER_COMMON,
    "optim.algo": "a2c",
    "optim.first_order": "rmsprop-tf",
    "optim.lr": 7e-4,
    "optim.lr_schedule": "linear",
    "optim.rmsprop_alpha": 0.99,
    "optim.rmsprop_eps": 1e-5,
    "rollout.n_envs": 16,
    "rollout.n_steps": 5,
    "rollout.gae_lambda": None,  # n-step bootstrapped returns
    "rollout.normalize_advantages": False,
    "loss.ent_coef": 0.01,
    "loss.value_loss": "mse",
    "policy.shared_trunk": True,
}
# rl-zoo hyperparams/a2c.yml CartPole-v1 (n_envs 8, ent_coef 0) over SB3 A2C defaults (n_steps 5,
# lr 7e-4 constant, gae_lambda 1 = n-step returns, torch.optim.RMSprop α 0.99 ε 1e-5: the zoo
# switches to RMSpropTFLike for Atari only); SB3 MlpPolicy: separate 64-64 tanh pi and vf.
_A2C_ZOO_CLASSIC: dict[str, Any] = {
    "optim.first_order": "rmsprop-torch",
    "rollout.n_envs": 8,
    "loss.ent_coef": 0.0,
    "optim.lr_schedule": "constant",
    "policy.shared_trunk": False,
}

# vwxyzjn/cleanrl ppo_atari.py Args: 8 envs × 128 steps, lr 2.5e-4 annealed, γ 0.99, GAE 0.95,
# 4 minibatches (of 1024 -> 256), 4 epochs, norm_adv, clip_coef 0.1 (constant), clip_vloss with
# the same 0.1, ent 0.01, vf 0.5 on ½·max(...) (half-mse), max_grad_norm 0.5, Adam eps 1e-5.
# MinAtar uses the same setting unchanged (no tuning; README "Controls").
_PPO_CLEANRL_ATARI: dict[str, Any] = {
    **_FIRST_ORDER_COMMON,
    "optim.algo": "ppo",
    "optim.first_order": "adam",
    "optim.adam_eps": 1e-5,
    "optim.lr": 2.5e-4,
    "optim.lr_schedule": "linear",
    "rollout.n_envs": 8,
    "rollout.n_steps": 128,
    "rollout.gae_lambda": 0.95,
    "rollout.normalize_advantages": True,  # per minibatch (PpoRule)
    "loss.ent_coef": 0.01,
    "loss.value_loss": "half-mse",
    "ppo.n_epochs": 4,
    "ppo.minibatch_size": 256,
    "ppo.clip_range": 0.1,
    "ppo.clip_range_schedule": "constant",
    "ppo.clip_value": 0.1,
    "ppo.target_kl": None,
    "policy.shared_trunk": True,
}
# SB3 PPO defaults (stable_baselines3/ppo/ppo.py): n_steps 2048, batch 64, 10 epochs, lr 3e-4,
# GAE 0.95, clip 0.2, no value clip, ent 0, vf 0.5 on mse, normalize_advantage; MlpPolicy with
# separate 64-64 tanh pi and vf networks.
_PPO_SB3_DEFAULT: dict[str, Any] = {
    "optim.lr": 3e-4,
    "optim.lr_schedule": "constant",
    "rollout.n_envs": 1,
    "rollout.n_steps": 2048,
    "loss.ent_coef": 0.0,
    "loss.value_loss": "mse",
    "ppo.n_epochs": 10,
    "ppo.minibatch_size": 64,
    "ppo.clip_range": 0.2,
    "ppo.clip_value": None,
    "policy.shared_trunk": False,
}
# rl-zoo hyperparams/ppo.yml per task (Acrobot-v1 also sets `normalize: true`, VecNormalize,
# which kfac-bench does not have: README "Controls" reports both sides as run).
_PPO_ZOO: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "rollout.n_envs": 8,
        "rollout.n_steps": 32,
        "ppo.minibatch_size": 256,
        "rollout.gae_lambda": 0.8,
        "rollout.gamma": 0.98,
        "ppo.n_epochs": 20,
        "optim.lr": 1e-3,
        "optim.lr_schedule": "linear",
        "ppo.clip_range": 0.2,
        "ppo.clip_range_schedule": "linear",
    },
    "Acrobot-v1": {
        "rollout.n_envs": 16,
        "rollout.n_steps": 256,
        "rollout.gae_lambda": 0.94,
        "rollout.gamma": 0.99,
        "ppo.n_epochs": 4,
    },
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
            "atari-tuned",
            "default for Atari: openai-baselines with the inverse every 10 updates (PyTorch ports)",
            # the amortisation of ikostrikov/pytorch-a2c-ppo-acktr-gail (``a2c_ppo_acktr/algo/
            # kfac.py`` KFACOptimizer Tf=10) and alirezakazemipour/ACKTR-PyTorch (inverse every
            # 10); everything else is the openai-baselines reference (issue 16: its cost)
            {**_BASELINES_ACKTR, "kfac.inverse_every": 10},
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
            "acktr-mujoco",
            "openai/baselines acktr_cont.py: 2500-step batches, KL-adaptive lr, K-FAC value net",
            dict(BASELINES_ACKTR_CONT),
        ),
        Preset(
            "mujoco-tuned",
            "default for continuous control: acktr-mujoco with log σ stepped by its exact Fisher",
            {**BASELINES_ACKTR_CONT, "policy.log_std_update": "fisher"},
        ),
        Preset(
            "a2c",
            "control: A2C (openai/baselines a2c.py) with TF RMSprop; rl-zoo batch on classic control",
            _A2C,
            per_family={
                "classic": _A2C_ZOO_CLASSIC,
                "generic": _A2C_ZOO_CLASSIC,
                "continuous": {**_A2C_ZOO_CLASSIC, **A2C_ZOO_CONTINUOUS},
            },
            per_env={"Acrobot-v1": {"rollout.n_envs": 16}},  # rl-zoo a2c.yml (without normalize)
        ),
        Preset(
            "ppo",
            "control: PPO-clip; CleanRL ppo_atari on Atari/MinAtar, rl-zoo ppo.yml on classic",
            _PPO_CLEANRL_ATARI,
            per_family={
                "classic": _PPO_SB3_DEFAULT,
                "generic": _PPO_SB3_DEFAULT,
                "continuous": {**_PPO_SB3_DEFAULT, **PPO_CLEANRL_CONTINUOUS},
            },
            per_env=_PPO_ZOO,
        ),
    ]
}

FAMILY_DEFAULT_PRESET: dict[EnvFamily, str] = {
    "classic": "classic-tuned",
    "generic": "classic-tuned",
    "continuous": "mujoco-tuned",
    "minatar": "minatar-tuned",
    "atari": "atari-tuned",
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
    """Resolve a full RunConfig from the layers (module docstring) and check it. Raises
    ConfigError (ValueError for an unknown variant) with one line; nothing is written.

    ``preset=None`` picks the environment family's default (FAMILY_DEFAULT_PRESET). ``overrides``
    (``--set``, a sweep's ``[set]`` and grid axes) may not name ``env``/``variant``/``preset``/
    ``seed``: those name the run and come from the arguments (IDENTITY_FLAGS). Every key is then
    checked against its domain (``config.check_domains``) and the combination against what the
    update rules can serve (``config.check_consistency``).
    """
    import variants  # the registry; imported here so config stays importable on its own

    overrides = overrides or {}
    for key in overrides:
        if key in IDENTITY_FLAGS:
            raise ConfigError(
                f"{key}: cannot be set with --set (it names the run); use {IDENTITY_FLAGS[key]}"
            )
    variants.get(variant)  # unknown name -> ValueError naming the valid ones
    family = env_family(env)
    preset_name = preset or FAMILY_DEFAULT_PRESET[family]
    chosen = get_preset(preset_name)
    config = RunConfig(env=env, variant=variant, seed=seed, preset=preset_name)
    config = with_overrides(config, FAMILY_BASE[family])
    config = with_overrides(config, chosen.values_for(env, family))
    if total_steps is not None:
        config = with_overrides(config, {"total_steps": total_steps})
    config = with_overrides(config, overrides)
    return check_consistency(check_domains(config))
