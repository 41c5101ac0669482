"""Preset tables for continuous control (MuJoCo and the Box-action classic tasks).

``presets.py`` layers these like every other table; they live here to keep each module short.
"""

from __future__ import annotations

from typing import Any

# openai/baselines baselines/acktr/acktr_cont.py learn() with run_mujoco.py (timesteps_per_batch
# 2500, γ 0.99, λ 0.97), policies.py GaussianMlpPolicy (64-64 tanh, state-independent log-std at
# 0, stepped by K-FAC without factors: "sgd") and value_functions.py NeuralNetValueFunction (64-64
# ELU, its own KfacOptimizer: lr 1e-3, clip_kl 0.3, epsilon 0.1, decay 0.95, kfac_update 2, cold_iter
# 50, cold_lr lr·0.1, 25 fits per batch). Policy KfacOptimizer: stepsize 0.03 adapted ×/÷1.5 toward
# KL 0.002, momentum 0.9, kfac_update 2, epsilon 1e-2, stats_decay 0.99, cold_iter 1 with
# cold_lr = stepsize·0.1, clip_kl 0.01 (the KfacOptimizer default), no gradient clipping; ZFilter
# observations (clip 5), standardised advantages, no entropy bonus. Differences, kept on purpose
# (README "Continuous control"): fixed 2500-step batches that bootstrap at time limits instead of
# whole episodes; the value net sees the observation only (baselines adds the previous
# observation, the action distribution and t/10); λ-returns as value targets instead of
# Monte-Carlo returns; baselines' weight decay 3e-4 (added to the damping) is left out.
BASELINES_ACKTR_CONT: dict[str, Any] = {
    "rollout.n_envs": 1,
    "rollout.n_steps": 2500,
    "rollout.gamma": 0.99,
    "rollout.gae_lambda": 0.97,
    "rollout.normalize_advantages": True,
    "normalize.obs": True,
    "normalize.obs_clip": 5.0,
    "normalize.reward": False,
    "loss.ent_coef": 0.0,
    "loss.value_loss": "mse",
    "optim.algo": "acktr",
    "optim.lr": 0.03,
    "optim.lr_schedule": "kl-adaptive",
    "optim.adaptive_target_kl": 0.002,
    "optim.adaptive_factor": 1.5,
    "optim.max_grad_norm": None,
    "optim.critic": "separate-kfac",
    "optim.critic_lr": 1e-3,
    "optim.critic_steps": 25,
    "policy.shared_trunk": False,
    "policy.hidden": (64, 64),
    "policy.activation": "tanh",
    "policy.critic_activation": "elu",
    "policy.log_std_init": 0.0,
    "policy.log_std_update": "sgd",
    "policy.init": "normc",
    "kfac.damping": 0.01,
    "kfac.damping_mode": "eigen",
    "kfac.stats_decay": 0.99,
    "kfac.stats_every": 1,
    "kfac.inverse_every": 2,
    "kfac.kl_clip": 0.01,
    "kfac.trust_region": "baselines",
    "kfac.momentum": 0.9,
    "kfac.momentum_scale": "1-mu",
    "kfac.cold_iters": 1,
    "kfac.cold_lr_scale": 0.1,
    "critic_kfac.damping": 0.1,
    "critic_kfac.stats_decay": 0.95,
    "critic_kfac.stats_every": 1,
    "critic_kfac.inverse_every": 2,
    "critic_kfac.kl_clip": 0.3,
    "critic_kfac.trust_region": "baselines",
    "critic_kfac.momentum": 0.9,
    "critic_kfac.cold_iters": 50,
    "critic_kfac.cold_lr_scale": 0.1,
    "total_steps": 1_000_000,
}

# vwxyzjn/cleanrl ppo_continuous_action.py Args: 1 env × 2048 steps, lr 3e-4 annealed, γ 0.99, GAE
# 0.95, 32 minibatches (of 2048 -> 64), 10 epochs, norm_adv, clip 0.2, clip_vloss (same 0.2), ent 0,
# vf 0.5 on ½·max(...), max_grad_norm 0.5; ClipAction, NormalizeObservation + clip 10,
# NormalizeReward(γ) + clip 10; separate 64-64 tanh actor and critic, log-std 0.
PPO_CLEANRL_CONTINUOUS: dict[str, Any] = {
    "rollout.n_envs": 1,
    "rollout.n_steps": 2048,
    "rollout.gae_lambda": 0.95,
    "optim.lr": 3e-4,
    "optim.lr_schedule": "linear",
    "ppo.n_epochs": 10,
    "ppo.minibatch_size": 64,
    "ppo.clip_range": 0.2,
    "ppo.clip_value": 0.2,
    "loss.ent_coef": 0.0,
    "loss.value_loss": "half-mse",
    "normalize.obs": True,
    "normalize.obs_clip": 10.0,
    "normalize.reward": True,
    "normalize.reward_clip": 10.0,
    "policy.shared_trunk": False,
    "policy.log_std_init": 0.0,
}
# rl-zoo hyperparams/a2c.yml MuJoCo entries (`normalize: true`) over SB3 A2C defaults: 1 env × 5
# steps, lr 7e-4 constant, torch RMSprop (α 0.99, ε 1e-5), n-step returns, ent 0, vf 0.5,
# max_grad_norm 0.5, separate 64-64 tanh networks; VecNormalize of observations and rewards.
A2C_ZOO_CONTINUOUS: dict[str, Any] = {  # over presets._A2C_ZOO_CLASSIC
    "rollout.n_envs": 1,
    "normalize.obs": True,
    "normalize.reward": True,
}
