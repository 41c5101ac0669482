"""Nested frozen run configuration, dotted-key overrides with type and domain checks, JSON form.

One :class:`RunConfig` fully describes a run. It is built in layers (see
:func:`kfac_bench.presets.build_config`):

    dataclass defaults  ->  family base (``presets.FAMILY_BASE``)  ->  preset table  ->  overrides

Every leaf is addressable by a dotted key (``kfac.damping``, ``rollout.n_envs``, ``total_steps``),
which is what ``--set key=value`` and sweep specs use. Values are checked against the field's type
annotation (``Literal`` fields list their valid choices in the error) and against the field's
domain, declared beside it (``setting(default, Positive())``; :mod:`kfac_bench.domains`).
:func:`check_domains` and :func:`check_consistency` run on every config ``build_config`` returns.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from kfac_bench.domains import (
    AtLeast,
    ConfigError,
    Domain,
    Each,
    Finite,
    Fraction,
    Identity,
    Interval,
    NonNegative,
    Positive,
    Probability,
    coerce,
    domain_of,
    parse_cli_value,
    setting,
)

__all__ = [
    "ConfigError",
    "RunConfig",
    "check_consistency",
    "check_domains",
    "coerce",
    "parse_cli_value",
    "with_overrides",
]

# Bounds that are not a matter of taste (each names its reason).
MAX_SEED = 999_999_999  # env i of reset r gets seed + i + 1_000_003·r; ale-py takes int32 seeds
MAX_LR = 1e6  # nothing meaningful lies above; the trust region's lr²·q overflows near 1e154
MAX_THREADS = 1024  # torch.set_num_threads takes a C int; more threads than this is a typo
MAX_WAIT_S = 1e6  # threading's wait overflows on huge timeouts; 11 days is "forever" here

DampingMode = Literal["eigen", "tikhonov", "tikhonov-pi", "ekfac"]
FisherType = Literal["sampled", "empirical"]
TrustRegion = Literal["baselines", "acktr-paper", "notebook", "none"]
RunningInit = Literal["variant", "first", "identity", "zeros-average"]


@dataclass(frozen=True)
class RolloutConfig:
    """On-policy batch: ``n_envs × n_steps`` transitions per update."""

    n_envs: int = setting(8, AtLeast(1))
    n_steps: int = setting(16, AtLeast(1))
    gamma: float = setting(0.99, Probability())
    # None: n-step bootstrapped returns (A2C/ACKTR); else GAE(λ)
    gae_lambda: float | None = setting(None, Probability())
    normalize_advantages: bool = False


@dataclass(frozen=True)
class NormalizeConfig:
    """Running normalisation of observations and rewards for training (``rl/normalize.py``).

    ``obs``: (o − mean)/sqrt(var + 1e-8) clipped to ±``obs_clip``, statistics updated from every
    collected observation and saved in the checkpoint (``play`` uses them frozen);
    ``reward``: r / sqrt(var(G) + 1e-8) clipped to ±``reward_clip``, G the running discounted
    return (SB3 ``VecNormalize``; gymnasium ``NormalizeReward`` as in CleanRL
    ``ppo_continuous_action.py``). Logged episode returns stay raw."""

    obs: bool = False
    obs_clip: float = setting(10.0, Positive())
    reward: bool = False
    reward_clip: float = setting(10.0, Positive())


@dataclass(frozen=True)
class LossConfig:
    """Training loss ``pg + vf_coef·value − ent_coef·H`` and the Fisher pass's value term."""

    ent_coef: float = setting(0.01, NonNegative())
    vf_coef: float = setting(0.5, NonNegative())
    vf_fisher_coef: float = setting(1.0, NonNegative())
    value_loss: Literal["mse", "half-mse"] = "mse"  # mean((v−R)²) (baselines HEAD) or ½ of it


Algo = Literal["acktr", "a2c", "ppo"]
Critic = Literal["shared", "separate-adam", "separate-kfac"]
FirstOrderOptimizer = Literal["rmsprop-tf", "rmsprop-torch", "adam"]


@dataclass(frozen=True)
class OptimConfig:
    """The update rule: ``acktr`` (K-FAC step) or a first-order control, ``a2c`` / ``ppo``."""

    algo: Algo = "acktr"
    lr: float = setting(0.25, Positive(MAX_LR))
    # kl-adaptive: lr starts at optim.lr and is divided (multiplied) by adaptive_factor after an
    # update whose measured KL is above 2× (below ½×) adaptive_target_kl, within [1e-8, 1]
    # (openai/baselines acktr/acktr_cont.py learn(); rl/stepsize.py)
    lr_schedule: Literal["constant", "linear", "kl-adaptive"] = "linear"
    adaptive_target_kl: float = setting(0.002, Positive())
    adaptive_factor: float = setting(1.5, Interval(1.0, 1e3))
    # a2c/ppo: every step; acktr: cold-start steps only. None: no clipping.
    max_grad_norm: float | None = setting(0.5, Positive())
    # a2c/ppo only. rmsprop-tf: TF1 semantics (ε inside the root, square average starts at 1) as
    # openai/baselines A2C; rmsprop-torch: torch.optim.RMSprop (SB3's A2C default); adam: PPO.
    first_order: FirstOrderOptimizer = "rmsprop-tf"
    rmsprop_alpha: float = setting(0.99, Probability(below_one=True))
    rmsprop_eps: float = setting(1e-5, Positive())
    # SB3 ActorCriticPolicy and CleanRL ppo.py both use 1e-5
    adam_eps: float = setting(1e-5, Positive())
    # separate-adam: the seed notebook; separate-kfac: a value network with its own K-FAC
    # (settings in critic_kfac; baselines acktr/value_functions.py)
    critic: Critic = "shared"
    critic_lr: float = setting(1e-3, Positive(MAX_LR))
    # separate critic: full-batch steps on the value loss per update
    critic_steps: int = setting(1, AtLeast(1))


@dataclass(frozen=True)
class PpoConfig:
    """PPO-clip epochs over one batch (``optim.algo = "ppo"``; SB3 ``PPO``, CleanRL ``ppo.py``)."""

    n_epochs: int = setting(10, AtLeast(1))
    # transitions per minibatch (SB3 ``batch_size``); at most rollout.n_envs × rollout.n_steps
    minibatch_size: int = setting(64, AtLeast(1))
    clip_range: float = setting(0.2, Positive())
    clip_range_schedule: Literal["constant", "linear"] = "constant"  # linear: with the lr factor
    # clip the value change (CleanRL clip_vloss), None: off
    clip_value: float | None = setting(None, Positive())
    # stop the epochs once approx KL exceeds 1.5·target (SB3), None: never
    target_kl: float | None = setting(None, Positive())


@dataclass(frozen=True)
class KfacConfig:
    """Curvature estimate, damping/inverse and the trust-region step (DESIGN.md §2–3)."""

    # λ, added to d_G d_Aᵀ (eigen) or split per factor (tikhonov*)
    damping: float = setting(0.01, Positive())
    damping_mode: DampingMode = "eigen"
    factor_damping: float | None = setting(None, Positive())  # γ for `tikhonov`; None: √λ
    # τ: eigenvalues ≤ τ are zeroed per factor (eigen mode)
    eigen_clip: float = setting(1e-6, NonNegative())
    # ekfac (George et al. 2018; curvature/ekfac.py): the scaling s is re-estimated every k-th
    # Fisher pass (KFAC-Pytorch TScal = 10) as an EMA with this decay (None: kfac.stats_decay)
    ekfac_scale_every: int = setting(1, AtLeast(1))
    ekfac_scale_decay: float | None = setting(None, Probability(below_one=True))
    # sampled: actions from the current policy + value noise (baselines); empirical: the
    # per-example gradients of the training loss (pg + vf_coef·value; rl/losses.py)
    fisher_type: FisherType = "sampled"
    stats_decay: float = setting(0.99, Probability(below_one=True))
    stats_every: int = setting(1, AtLeast(1))  # Fisher pass every k updates
    inverse_every: int = setting(10, AtLeast(1))  # decompositions recomputed every k updates
    running_init: RunningInit = "variant"  # "variant": the variant's own rule
    # k for "zeros-average" (baselines: plain average of first 10)
    init_average_steps: int = setting(10, AtLeast(1))
    dtype: Literal["float32", "float64"] = "float32"  # factors and their decompositions
    kl_clip: float = setting(0.001, Positive())  # δ
    trust_region: TrustRegion = "baselines"
    # "linear": δ decays with the lr schedule's factor. While the clip binds, lr·ν = sqrt(δ/q) does
    # not depend on lr, so a linear lr decay alone does not shrink K-FAC steps (REFERENCES §3.4).
    kl_clip_schedule: Literal["constant", "linear"] = "constant"
    max_nu: float = setting(1.0, Positive())
    momentum: float = setting(0.9, Probability(below_one=True))
    momentum_scale: Literal["1-mu", "1"] = "1-mu"  # θ −= lr·(1−μ)·buf (BL/IK/AK) or lr·buf (KP)
    # clipped momentum-SGD updates before K-FAC steps (baselines: 10)
    cold_iters: int = setting(0, AtLeast(0))
    cold_momentum: float = setting(0.9, Probability(below_one=True))
    # cold steps use lr × this (baselines acktr_cont.py passes cold_lr = lr·(1 − 0.9))
    cold_lr_scale: float = setting(1.0, Positive())
    # fast knob: statistics on a subsample of the batch
    stats_batch_fraction: float = setting(1.0, Fraction())
    # Speed knobs (issue 6; kfac_bench/bench_report.py FAST). Off by default: the synchronous
    # inverse of the references. async: decompositions run on a background thread from a snapshot
    # of the factors and are used exactly `async_staleness` updates later (waiting if needed), so
    # runs stay reproducible and the staleness is exact (openai/baselines ran it unbounded).
    async_inverse: bool = False
    # updates between a decomposition's snapshot and its first use; at most inverse_every
    async_staleness: int = setting(5, AtLeast(1))
    # waiting longer than this for a decomposition: KfacError
    async_timeout_s: float = setting(600.0, Positive(MAX_WAIT_S))
    # torch threads for the decompositions (0: torch's default)
    inverse_threads: int = setting(0, AtLeast(0, MAX_THREADS))
    # a Fisher batch's statistics computed on a background thread during the next collection;
    # every step then uses the factors one batch older (curvature/pipeline.py, issue 16)
    pipelined_stats: bool = False
    unsupported: Literal["error", "sgd"] = "error"  # parameters outside Linear/Conv2d


@dataclass(frozen=True)
class PolicyConfig:
    """Network: ``auto`` picks MLP / MinAtar CNN / Nature CNN from the observation shape."""

    arch: Literal["auto", "mlp", "minatar-cnn", "nature-cnn"] = "auto"
    hidden: tuple[int, ...] = setting((64, 64), Each(AtLeast(1)))
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    shared_trunk: bool = True  # False: separate actor and critic networks (stable-baselines MLP)
    # orthogonal: baselines common/policies.py ortho_init (√2 trunk, 0.01 policy head, 1 value);
    # normc: baselines acktr continuous normc_initializer (1 trunk, 0.1 Gaussian mean, 1 value)
    init: Literal["orthogonal", "normc"] = "orthogonal"
    # a separate critic's MLP activation ("same": policy.activation; baselines' value net: elu)
    critic_activation: Literal["same", "tanh", "relu", "elu"] = "same"
    # Box actions: diagonal Gaussian with a state-independent log σ, initialised to this
    log_std_init: float = setting(0.0, Finite())
    # how ACKTR steps log σ: fisher = its exact Fisher (2 per dimension) + kfac.damping;
    # sgd = the plain gradient inside the trust region (openai/baselines acktr_cont)
    log_std_update: Literal["fisher", "sgd"] = "fisher"


@dataclass(frozen=True)
class AtariConfig:
    """Atari protocol (ale-py ``AtariVectorEnv``); training-only wrappers are flagged as such."""

    episodic_life: bool = True
    reward_clip: bool = True
    noop_max: int = setting(30, AtLeast(0))
    frame_skip: int = setting(4, AtLeast(1))
    repeat_action_probability: float = setting(0.0, Probability())


@dataclass(frozen=True)
class LogConfig:
    """How often the trainer writes ``updates.csv`` rows and checkpoints."""

    update_every: int = setting(10, AtLeast(1))  # updates between updates.csv rows
    # updates between checkpoints (and one at the end)
    checkpoint_every: int = setting(200, AtLeast(1))
    diagnostics: bool = True  # factor traces / condition numbers in updates.csv
    phase_times: bool = True  # the time_* columns: seconds per phase (kfac_bench/timing.py)
    # the same rows as TensorBoard events / a W&B run too (kfac_bench.tracking)
    tensorboard: bool = False
    wandb: Literal["off", "offline", "online"] = "off"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs. ``env`` is a Gymnasium id.

    ``env``, ``variant``, ``preset`` and ``seed`` name the run (IDENTITY_FLAGS): they come from
    their own flags, never from ``--set``."""

    env: str = field(metadata={"domain": Identity("--env", "a Gymnasium id")})
    variant: str = setting("paper", Identity("--variant", "a name of `kfac-bench variants`"))
    seed: int = setting(0, AtLeast(0, MAX_SEED))
    preset: str = setting("", Identity("--preset", "a name of `kfac-bench presets`"))
    total_steps: int = setting(100_000, AtLeast(1))
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    torch_threads: int = setting(0, AtLeast(0, MAX_THREADS))  # 0: leave torch's default
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)
    kfac: KfacConfig = field(default_factory=KfacConfig)
    # the value network's own K-FAC (optim.critic = "separate-kfac"); lr is optim.critic_lr
    critic_kfac: KfacConfig = field(default_factory=KfacConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    atari: AtariConfig = field(default_factory=AtariConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def label(self) -> str:
        """What tables and figures call this run: the variant, or the control's algo name."""
        return self.variant if self.optim.algo == "acktr" else self.optim.algo


# The keys that name a run, and the flag that sets each.
IDENTITY_FLAGS: dict[str, str] = {
    "env": "--env",
    "variant": "--variant",
    "preset": "--preset",
    "seed": "--seed",
}


# ---------------------------------------------------------------------------------------------
# Dotted keys


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def leaf_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of a config class, mapped to its type annotation."""
    keys: dict[str, Any] = {}
    for name, tp in _hints(cls).items():
        if _is_dataclass_type(tp):
            keys.update(leaf_keys(tp, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = tp
    return keys


@functools.cache
def leaf_domains(cls: type = RunConfig, prefix: str = "") -> dict[str, Domain | None]:
    """Every dotted leaf key of a config class, mapped to its domain (None: no declared domain)."""
    hints = _hints(cls)
    domains: dict[str, Domain | None] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            domains.update(leaf_domains(tp, f"{prefix}{f.name}."))
        else:
            domains[f"{prefix}{f.name}"] = domain_of(f, tp)
    return domains


def check_domains(config: RunConfig) -> RunConfig:
    """Check every leaf against its domain (``None`` passes where the type allows it).

    Raises ConfigError for the first key outside its domain, e.g. ``kfac.damping: inf is not
    allowed (must be a finite number > 0)``; returns config."""
    for key, domain in leaf_domains().items():
        value = get_value(config, key)
        if domain is not None and value is not None:
            domain.check(key, value)
    return config


def check_key(key: str) -> Any:
    """Return the annotation of a dotted key; unknown keys raise ConfigError with close matches."""
    keys = leaf_keys()
    if key in keys:
        return keys[key]
    import difflib

    close = difflib.get_close_matches(key, list(keys), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown config key {key!r}{hint}; see `kfac-bench presets --keys`")


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy with dotted-key overrides applied (typed values; checked)."""
    for key, value in overrides.items():
        tp = check_key(key)
        config = _replace_path(config, key.split("."), coerce(key, value, tp))
    return config


def check_consistency(config: RunConfig) -> RunConfig:
    """Combinations of in-domain values that no update rule can serve. Raises ConfigError (one
    line: the keys, their values and the reason); returns config."""
    optim, kfac, ppo, rollout = config.optim, config.kfac, config.ppo, config.rollout
    if optim.critic != "shared" and optim.algo != "acktr":
        raise ConfigError(
            f"optim.critic={optim.critic!r} needs optim.algo='acktr' ({optim.algo} steps actor and "
            "critic with its one optimiser; policy.shared_trunk=false gives separate networks)"
        )
    if optim.critic_steps > 1 and (optim.algo != "acktr" or optim.critic == "shared"):
        raise ConfigError(
            "optim.critic_steps > 1 needs optim.algo='acktr' and optim.critic='separate-adam' or "
            "'separate-kfac'"
        )
    if optim.critic == "separate-kfac" and config.critic_kfac.async_inverse:
        raise ConfigError(
            "critic_kfac.async_inverse=true is not supported (the critic takes several K-FAC "
            "steps per batch); set critic_kfac.async_inverse=false"
        )
    for knob in ("async_inverse", "pipelined_stats"):
        if optim.algo == "acktr" and getattr(kfac, knob) and kfac.damping_mode == "ekfac":
            raise ConfigError(
                f"kfac.{knob}=true does not support kfac.damping_mode='ekfac' (its scaling is "
                f"re-estimated in the basis in use every update); set kfac.{knob}=false"
            )
    if optim.critic == "separate-kfac" and config.critic_kfac.pipelined_stats:
        raise ConfigError(
            "critic_kfac.pipelined_stats=true is not supported (the critic takes several K-FAC "
            "steps on one batch); set critic_kfac.pipelined_stats=false"
        )
    # curvature/optimizer.py KFAC._refresh_decompositions keeps one background decomposition in
    # flight: the one snapshotted at a due step must be installed before the next is due.
    if optim.algo == "acktr" and kfac.async_inverse and kfac.async_staleness > kfac.inverse_every:
        raise ConfigError(
            f"kfac.async_inverse=true needs kfac.async_staleness <= kfac.inverse_every, got "
            f"{kfac.async_staleness} > {kfac.inverse_every} (one decomposition runs at a time and "
            f"is used before the next is due): set kfac.inverse_every >= {kfac.async_staleness} "
            f"or kfac.async_staleness <= {kfac.inverse_every}"
        )
    from kfac_bench.tracking_availability import check_backends  # tracking packages

    check_backends(config.log.tensorboard, config.log.wandb)
    batch = rollout.n_envs * rollout.n_steps
    if optim.algo == "ppo" and ppo.minibatch_size > batch:
        raise ConfigError(
            f"ppo.minibatch_size: {ppo.minibatch_size} exceeds the batch of rollout.n_envs × "
            f"rollout.n_steps = {rollout.n_envs} × {rollout.n_steps} = {batch} transitions"
        )
    return config


def _replace_path(obj: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: _replace_path(getattr(obj, head), rest, value)})


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), for config.json."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_dict(tree: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :func:`to_dict` output (unknown keys rejected)."""
    flat = flatten(tree)
    known = leaf_keys()
    config = RunConfig(env=str(flat.pop("env")))
    return with_overrides(config, {k: v for k, v in flat.items() if k in known or check_key(k)})


def get_value(config: RunConfig, key: str) -> Any:
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj
